"""The example third-party plugin's own tests run in a fresh venv where it is installed
(``tests/integration/test_plugin_packages.py``), never in this one."""

collect_ignore = ["example_plugin"]
