"""Where inputs and outputs live: a local path, or any filesystem pyarrow speaks, named by URI.

``s3://bucket/prefix``, ``gs://bucket/prefix``, ``hdfs://host:port/path`` and ``file:///path`` go
through :mod:`pyarrow.fs` (``FileSystem.from_uri``: credentials, region and endpoint from the
usual environment, e.g. ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``);
a scheme pyarrow has no filesystem for (``abfs://``, ``az://``, ...) goes through fsspec, when the
fsspec package for it is installed. Anything else is a local path.

A :class:`Location` is one such place: its filesystem and its path inside it. Object stores have
no directories and no atomic rename, so callers (the sink) use only what every filesystem has:
whole-object writes, reads, listings and deletes.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str) -> bool:
    return bool(_SCHEME.match(location))


@dataclass(frozen=True)
class Location:
    """A place in a filesystem: ``fs`` and ``path`` (pyarrow's form: no scheme, ``/``-separated)."""

    fs: pafs.FileSystem
    path: str
    uri: str  # as the user wrote it, for messages

    @classmethod
    def of(cls, location: str | Path) -> Location:
        location = str(location)
        if not is_uri(location):
            return cls(pafs.LocalFileSystem(), str(Path(location).absolute()), location)
        try:
            fs, path = pafs.FileSystem.from_uri(location)
        except pa.ArrowInvalid as exc:
            if "Unrecognized filesystem type" not in str(exc):
                raise ValueError(f"{location}: {exc}") from exc
            fs, path = _fsspec(location)
        return cls(fs, path.rstrip("/"), location)

    @property
    def local(self) -> bool:
        """Local files can be renamed atomically and locked with flock; objects cannot."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> Location:
        joined = "/".join([self.path, *parts])
        return Location(self.fs, joined, "/".join([self.uri.rstrip("/"), *parts]))

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def open(self):
        """A binary input stream (read sequentially; ``readline`` and iteration work)."""
        return self.fs.open_input_file(self.path)

    def files(self, suffix: str = "") -> list[Location]:
        """Files directly in this directory (or under this prefix) ending in ``suffix``, by name."""
        return [location for location, _ in self.file_sizes(suffix)]

    def file_sizes(self, suffix: str = "") -> list[tuple[Location, int]]:
        """:meth:`files` with their sizes, from one listing (no request per file)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [(Location(self.fs, info.path, f"{self.uri.rstrip('/')}/{info.base_name}"), info.size)
                for info in sorted(infos, key=lambda i: i.path)
                if info.type == pafs.FileType.File and info.base_name.endswith(suffix)]

    def write_bytes(self, data: bytes, atomic: bool = True) -> None:
        """Write the whole object. An object store's PUT is atomic by itself: the object appears
        whole or not at all. A local file is not, so ``atomic`` writes it under a temporary name
        and renames it (synced first: the rename must not reach the disk before the data)."""
        if not self.local:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return
        final = Path(self.path)
        final.parent.mkdir(parents=True, exist_ok=True)
        target = final.with_name(f".{final.name}.tmp") if atomic else final
        with open(target, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if atomic:
            os.replace(target, final)

    def delete(self) -> None:
        self.fs.delete_file(self.path)

    def __str__(self) -> str:
        return self.uri


def expand(pattern: str) -> list[Location]:
    """The files a path, URI or glob (``*``, ``?``, ``[...]``, ``**``) names, sorted; [] if none."""
    if not glob.has_magic(pattern):
        location = Location.of(pattern)
        return [location] if location.exists() else []
    if not is_uri(pattern):
        return [Location.of(match) for match in sorted(glob.glob(pattern, recursive=True))]
    # An object store lists by prefix: list below the part without wildcards, then match.
    fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0].rsplit("/", 1)[0]
    base = Location.of(fixed)
    wanted = base.path + pattern[len(fixed):]
    infos = base.fs.get_file_info(pafs.FileSelector(base.path, recursive=True, allow_not_found=True))
    return [Location(base.fs, info.path, fixed + info.path[len(base.path):])
            for info in sorted(infos, key=lambda i: i.path)
            if info.type == pafs.FileType.File and _glob_match(info.path, wanted)]


def _glob_match(path: str, pattern: str) -> bool:
    return _segments_match(path.split("/"), pattern.split("/"))


def _segments_match(parts: list[str], wanted: list[str]) -> bool:
    # As glob: a wildcard stays within one segment; only a "**" segment spans any number of them.
    if not wanted:
        return not parts
    if wanted[0] == "**":
        return any(_segments_match(parts[skip:], wanted[1:]) for skip in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], wanted[0]) and _segments_match(parts[1:], wanted[1:])


def read_blocks(location: Location, block: int = 1 << 20) -> Iterator[bytes]:
    """A file in blocks of whole lines (each ends with a line end, the file's last may not):
    memory holds one block."""
    with location.fs.open_input_stream(location.path) as f:
        rest = b""
        while chunk := f.read(block):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut]
            rest = data[cut:]
        if rest:
            yield rest


def read_lines(location: Location, block: int = 1 << 20) -> Iterator[bytes]:
    """The lines of a file (without their line ends), read in blocks: memory holds one block."""
    for data in read_blocks(location, block):
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()  # the empty string after the block's last line end
        for line in lines:
            yield line.removesuffix(b"\r")


def _fsspec(location: str) -> tuple[pafs.FileSystem, str]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"{location}: no filesystem for this scheme (pyarrow has none, and fsspec "
                         f"says: {exc})") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
