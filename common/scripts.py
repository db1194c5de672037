"""Where a script step's file is: the one rule, shared by `workflow validate` (a problem
in the file, at its line) and the script runner (a failure of the interaction), so that
what validates is what runs and what is refused at run time is refused at validation.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath


def locate_script(script: str, scripts_dir: Path) -> tuple[Path | None, str]:
    """The script's real path inside scripts_dir, or None and why not.

    A workflow names its script; it must not be able to reach any other file on the
    worker, so absolute paths, '..' and symlinks leading out are refused before
    anything runs. The resolved path is what gets executed, so swapping a symlink
    after this check cannot redirect the run.
    """
    where = f"script {script!r} in the scripts directory {scripts_dir}"
    relative = PurePath(script)
    if not script or relative.is_absolute():
        return None, f"{where}: a script is named by a path relative to the scripts directory"
    if ".." in relative.parts:
        return None, f"{where}: '..' is not allowed in a script path"
    try:
        root = Path(scripts_dir).resolve()
        real = (root / relative).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # NUL byte, symlink loop, ...
        return None, f"{where}: unusable path ({exc})"
    if not root.is_dir():
        return None, f"{where}: the scripts directory does not exist"
    if not real.is_relative_to(root):
        return None, f"{where}: it leads outside the scripts directory"
    if not real.is_file():
        return None, f"{where}: no such file" if not real.exists() else f"{where}: not a regular file"
    if real.suffix != ".py" and not os.access(real, os.X_OK):
        return None, f"{where}: not executable (chmod +x it, or name a Python script *.py)"
    return real, ""
