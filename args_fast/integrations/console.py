"""Whether a command shows its progress bars and info lines (``--quiet``, ``TQDM_DISABLE``): state that
the run files and the torchrun progress bars both read, in a module that imports neither."""
from __future__ import annotations

import os

# --quiet: no progress bars and no info lines on stderr (results, warnings and errors still print)
_quiet = False
_bars_hidden = False   # bars only (generate --stream: a bar would cut into the streamed text)


def set_quiet(value: bool) -> bool:
    """Switch the info lines and progress bars off (or on again); returns the previous setting."""
    global _quiet
    previous, _quiet = _quiet, bool(value)
    return previous


def quiet() -> bool:
    return _quiet


def hide_progress(value: bool) -> bool:
    """Switch the progress bars alone off (or on again); returns the previous setting."""
    global _bars_hidden
    previous, _bars_hidden = _bars_hidden, bool(value)
    return previous


def progress_disabled() -> bool:
    """No progress bars: ``--quiet``, or ``TQDM_DISABLE`` set to a true value (read now, not when tqdm
    was imported, and applied to bars that pass ``disable=`` themselves)."""
    env = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return _quiet or _bars_hidden or env not in ("", "0", "false", "no", "off")
