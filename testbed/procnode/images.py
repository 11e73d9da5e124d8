"""Image name -> the project folder that is its root (testbed/images.json), reread when it changes."""

from __future__ import annotations

import json
import threading
from pathlib import Path


class ImageError(Exception):
    """The image cannot be "pulled" (kubelet reasons ErrImagePull / ImagePullBackOff)."""


class Images:
    def __init__(self, path: Path, repo_root: Path) -> None:
        self.path, self.repo_root = Path(path), Path(repo_root)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._map: dict[str, str] = {}

    def _load(self) -> dict[str, str]:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError as exc:
                raise ImageError(f"image map {self.path} does not exist") from exc
            if mtime != self._mtime:
                self._map = json.loads(self.path.read_text())
                self._mtime = mtime
            return self._map

    def resolve(self, image: str) -> Path:
        """The folder an image runs in; ImageError when it is not mapped or the folder is missing."""
        mapping = self._load()
        candidates = [image]
        if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
            candidates.append(image + ":latest")
        for name in candidates:
            if name in mapping:
                folder = (self.repo_root / mapping[name]).resolve()
                if not folder.is_dir():
                    raise ImageError(f'image "{image}" maps to {folder}, which is not a directory')
                return folder
        raise ImageError(f'image "{image}" is not in {self.path} (known: {", ".join(sorted(mapping)) or "none"})')
