"""The command line: the parser and its option types (options), the options every task shares with
their rules (arguments), config files (config_file), and the run comparison tool (configcmp)."""
