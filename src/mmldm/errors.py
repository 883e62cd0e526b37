"""The one base class of the errors a user can fix (a bad file, key, path or argument).

Every such error derives from :class:`MMLDMError` as well as from the builtin it used to be
(``ValueError``, ``RuntimeError``), so ``except ValueError`` in user code keeps working while
the command line prints any of them as one line naming the file or key, without a traceback.
A traceback is kept for what is not in this family: a bug is not the user's to fix.
"""


class MMLDMError(Exception):
    """An error whose message tells the user what to change (``mmldm``: one line, exit 1)."""
