"""Where mlx_mqa keeps its per-user cache (compiled libraries, converted benchmark models).

Standard library only: mlx_mqa.cpu.blas imports this before mlx.core is loaded.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def cache_dir() -> Path:
    """$MLX_MQA_CACHE, else $XDG_CACHE_HOME/mlx_mqa, else ~/.cache/mlx_mqa (not created here)."""
    explicit = os.environ.get("MLX_MQA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: relative values are ignored
        return Path(xdg) / "mlx_mqa"
    return Path.home() / ".cache" / "mlx_mqa"


def private_dir(path: Path) -> Path:
    """Create `path` (mode 0700) if needed and make sure only the current user can write into it.

    A directory we own is tightened to 0700; one owned by someone else raises PermissionError: what
    is loaded from it could have been planted by another user.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a directory owned by the current user")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path
