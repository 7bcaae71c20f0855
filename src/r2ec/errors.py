"""The base of every error the CLI reports as one clean line (a user's input is wrong, not the code)."""


class UserError(ValueError):
    """Bad input, bad params or a broken contract: the message names the file, line and field."""
