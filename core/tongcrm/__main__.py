from tongcrm.cli import main

main()
