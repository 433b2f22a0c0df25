"""Locating the shared data folder (traces, profiles) that is never committed.

Invariant: nothing here reads file contents; it only answers *where* the data folder is.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_RELATIVE = Path("..") / "shared" / "data"


def _repo_root() -> Path:
    """The checkout root: ``src/fineserve/workload/data.py`` -> three levels up from the package."""
    return Path(__file__).resolve().parents[3]


def default_data_dirs() -> tuple[Path, ...]:
    """Candidate default locations, in the order they are tried."""
    return (Path.cwd() / DEFAULT_RELATIVE, _repo_root() / DEFAULT_RELATIVE)


def resolve_data_dir(path: str | Path | None) -> Path | None:
    """Return the data folder to read from, or None when there is none.

    An explicit ``path`` must be an existing directory, else ``ValueError`` naming it. With
    ``None`` the defaults (``../shared/data`` relative to the current directory, then relative to
    the repository root) are tried; the first existing one is returned, otherwise ``None`` so the
    caller falls back to committed figures or synthetic data.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ValueError(f"data folder {str(path)!r} does not exist or is not a directory")
        return p.resolve()
    for cand in default_data_dirs():
        if cand.is_dir():
            return cand.resolve()
    return None


def find_data_file(data_dir: Path, subdir: str, filename: str) -> Path:
    """Find ``filename`` under ``data_dir/subdir`` or directly in ``data_dir``.

    Accepting both lets callers pass either the data root or the dataset's own folder.
    Raises ``FileNotFoundError`` naming both places tried.
    """
    for cand in (Path(data_dir) / subdir / filename, Path(data_dir) / filename):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"{filename} not found in {Path(data_dir) / subdir} or {Path(data_dir)}"
    )
