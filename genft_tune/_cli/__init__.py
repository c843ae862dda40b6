"""The ``genft-tune`` command: ``genft.py`` holds the table of subcommands and imports
only the module of the one being run (so ``ls``, ``cp``, ``cat`` and ``--help`` load no
torch); each module registers its parser and imports what it runs. ``_checks.py`` turns
a bad command line into one message and exit status 2 before anything is read."""
