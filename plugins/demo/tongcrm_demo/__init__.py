"""``tongcrm demo``: a fresh member base with a few weeks of believable life, served on loopback.

The story (:mod:`tongcrm_demo.story`) is separate from the command that runs it (:mod:`tongcrm_demo.runner`).
The demo lives in its own distribution because it plays the first-party plugins' fake platforms: a
distribution may import plugins, the core may not.
"""
