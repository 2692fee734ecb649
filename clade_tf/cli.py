"""What the command lines of the applications share (they may not import each other)."""

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and every option's default (where the help text does
    not already say what the default means)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default:" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"
