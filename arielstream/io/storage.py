"""Where a data folder lives: a local folder, or a URL read through a pyarrow filesystem.

A data folder is given as a local path or as a URL: ``s3://bucket/prefix`` (pyarrow's own S3
client: credentials from the usual ``AWS_*`` variables, ``~/.aws`` or the machine's role;
options in the query, ``?endpoint_override=HOST:PORT&scheme=http&region=REGION``),
``gs://bucket/prefix``, or any URL that :meth:`pyarrow.fs.FileSystem.from_uri` knows, or
failing that fsspec (through :class:`pyarrow.fs.PyFileSystem`). A local folder stays a
:class:`pathlib.Path` and is read exactly as before (``file://`` URLs too); a URL becomes a
:class:`RemotePath`, which offers the few path operations the readers use (``/``, ``name``,
``parent``, ``exists``, ``is_dir``, ``glob``, ``stat``, ``relative_to``), is opened with
:func:`open_input`, and builds its filesystem once per process (tasks carry it to loky and
dask workers, which read the store themselves).

Secrets never leave this module as text: ``str(RemotePath)`` is the URL without its user info
(``s3://KEY:SECRET@bucket``) and without its query; :func:`describe` keeps only the query options
that name the endpoint (:data:`SAFE_QUERY`), for the output's ``source`` attribute; and the
filesystem's error messages are scrubbed of the user info and of every other query value.

Errors: an unreachable endpoint, refused credentials or a URL no filesystem reads raise
:class:`InputError` naming the location (exit 66, like a missing local folder); a missing
object raises ``FileNotFoundError``, as a missing local file does, for the readers to name.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import InputError, MissingDependencyError, OutputError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
# query options kept where a location is recorded or shown: they say where the store is, not who reads it
SAFE_QUERY = ("endpoint_override", "scheme", "region")


def is_url(location: object) -> bool:
    """True for a ``scheme://...`` string (a ``file://`` URL included)."""
    return isinstance(location, str) and bool(_URL.match(location))


def _redacted(url: str, keep_query: bool) -> str:
    """``url`` without user info, fragment and (all, or all but :data:`SAFE_QUERY`) query options."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = ""
    if keep_query:
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k in SAFE_QUERY],
                          safe=":/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _secrets(url: str) -> list[str]:
    """What of ``url`` may be a credential: its user info (and each half) and the values of its other query options.

    Values of six characters or more: a flag (``=true``) is no secret, and replacing it would garble messages.
    """
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    found = [userinfo, *userinfo.split(":")] if userinfo else []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in SAFE_QUERY]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= 6}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message) with whatever of ``url`` may be a credential replaced by ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


class Stat(NamedTuple):
    """What a listing says of a file: the fields of :func:`os.stat` the readers use."""

    st_size: int
    st_mtime_ns: int | None  # None where the filesystem keeps no modification time (fsspec's memory://)

    @property
    def st_mtime(self) -> float:
        """Modification time in seconds (-1.0 when unknown)."""
        return -1.0 if self.st_mtime_ns is None else self.st_mtime_ns / 1e9


@dataclass(frozen=True, order=True)
class RemotePath:
    """A file or folder under a data folder given as a URL: ``base`` (as given) and ``rel`` (below it, ``/``-separated).

    Immutable, hashable and picklable: tasks carry it to the processes that read it. Printing it
    never shows credentials (see the module doc); :func:`locator` is the full URL.
    """

    base: str = field(repr=False)  # the data folder's URL as given: may carry credentials, never shown
    rel: str = ""
    kind: str | None = field(default=None, compare=False, repr=False)  # "file" or "dir" where a listing said so

    def __post_init__(self) -> None:
        if not is_url(self.base):
            raise ValueError(f"RemotePath: {_redacted(self.base, False)!r} is not a URL")

    # ------------------------------------------------------------ names (no request is made)
    def __str__(self) -> str:
        parts = urlsplit(_redacted(self.base, keep_query=False))
        path = parts.path.rstrip("/") + ("/" + self.rel if self.rel else "")
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def describe(self) -> str:
        """``str(self)`` with the query options that name the endpoint (:data:`SAFE_QUERY`): how it is recorded."""
        query = urlsplit(_redacted(self.base, keep_query=True)).query
        return f"{self}?{query}" if query else str(self)

    def __truediv__(self, name: str | PurePosixPath) -> RemotePath:
        rel = "/".join(p for p in (*self.rel.split("/"), *str(name).split("/")) if p and p != ".")
        return RemotePath(self.base, rel)

    @property
    def name(self) -> str:
        """The last component (the data folder's own name for the folder itself)."""
        return posixpath.basename(self.rel) if self.rel else posixpath.basename(str(self).rstrip("/"))

    @property
    def parent(self) -> RemotePath:
        """The folder this is in (the data folder is its own parent: nothing above it is read)."""
        return RemotePath(self.base, posixpath.dirname(self.rel))

    def relative_to(self, other: RemotePath) -> PurePosixPath:
        """This path below ``other``; :class:`ValueError` when it is not below it (as ``PurePath.relative_to``)."""
        if not isinstance(other, RemotePath) or other.base != self.base:
            raise ValueError(f"{self} is not below {other}")
        if not other.rel:
            return PurePosixPath(self.rel)
        if self.rel == other.rel:
            return PurePosixPath()
        if not self.rel.startswith(other.rel + "/"):
            raise ValueError(f"{self} is not below {other}")
        return PurePosixPath(self.rel[len(other.rel) + 1:])

    def resolve(self) -> RemotePath:
        """Itself: a URL has no symlinks to follow (:meth:`pathlib.Path.resolve` for local folders)."""
        return self

    def as_posix(self) -> str:
        """``str(self)``."""
        return str(self)

    # ------------------------------------------------------------ the filesystem (requests)
    @property
    def key(self) -> str:
        """The path the filesystem knows this by (``bucket/prefix/...`` for S3)."""
        root = _filesystem(self.base)[1]
        return f"{root.rstrip('/')}/{self.rel}" if self.rel else root

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem that reads it (built once per process and data folder)."""
        return _filesystem(self.base)[0]

    def info(self) -> pafs.FileInfo:
        """The filesystem's :class:`pyarrow.fs.FileInfo` (one request)."""
        with remote_errors(self):
            return self.filesystem.get_file_info(self.key)

    def exists(self) -> bool:
        """True when an object (or a folder: a prefix with objects under it) is there."""
        import pyarrow.fs as pafs

        return self.kind is not None or bool(self.info().type != pafs.FileType.NotFound)

    def is_dir(self) -> bool:
        """True for a folder (a prefix with objects under it); no request for an entry of :meth:`iterdir`."""
        import pyarrow.fs as pafs

        return self.kind == "dir" if self.kind is not None else bool(self.info().type == pafs.FileType.Directory)

    def is_file(self) -> bool:
        """True for an object; no request for an entry of :meth:`iterdir`."""
        import pyarrow.fs as pafs

        return self.kind == "file" if self.kind is not None else bool(self.info().type == pafs.FileType.File)

    def stat(self) -> Stat:
        """Size and modification time; ``FileNotFoundError`` when there is no such object."""
        import pyarrow.fs as pafs

        info = self.info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(2, "no such object", str(self))
        return Stat(int(info.size), info.mtime_ns)

    def iterdir(self) -> Iterator[RemotePath]:
        """The files and folders directly in this folder (one listing; each knows whether it is a folder)."""
        yield from (path for path, _ in self._entries(recursive=False))

    def glob(self, pattern: str) -> list[RemotePath]:
        """The entries of this folder whose names match ``pattern`` (one level, as ``Path.glob`` with no ``/``)."""
        return [path for path in self.iterdir() if fnmatchcase(path.name, pattern)]

    def subfolders(self, keep: Callable[[str], bool]) -> dict[str, dict[str, bool]]:
        """The folders in this one whose names ``keep`` accepts, each with its entries (``name -> is a folder``).

        One recursive listing (a request per thousand objects on S3), not one per folder:
        what :func:`arielstream.layout.discover_observations` lists planets with.
        """
        import pyarrow.fs as pafs

        out: dict[str, dict[str, bool]] = {}
        below = self.rel.count("/") + 1 if self.rel else 0
        for path, info in self._entries(recursive=True):
            parts = path.rel.split("/")[below:]
            if not keep(parts[0]):
                continue
            if len(parts) == 1 and info.type == pafs.FileType.Directory:
                out.setdefault(parts[0], {})
            elif len(parts) == 2:
                out.setdefault(parts[0], {})[parts[1]] = info.type == pafs.FileType.Directory
        return out

    def _entries(self, recursive: bool) -> list[tuple[RemotePath, pafs.FileInfo]]:
        """Every entry below this folder with its FileInfo (none when it is not a folder)."""
        import pyarrow.fs as pafs

        root = _filesystem(self.base)[1].rstrip("/")
        with remote_errors(self):
            try:
                infos = self.filesystem.get_file_info(pafs.FileSelector(self.key, recursive=recursive))
            except FileNotFoundError:
                return []
        out = []
        for info in infos:
            rel = info.path[len(root):].strip("/") if root else info.path.strip("/")
            kind = {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(info.type)
            out.append((RemotePath(self.base, rel, kind), info))
        return out


DataPath = Path | RemotePath  # a file or folder of a data folder: local, or under a URL


# ---------------------------------------------------------------- filesystems, one per data folder and process
@functools.lru_cache(maxsize=16)
def _filesystem(base: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem that reads ``base`` and the path of ``base`` in it: pyarrow's, else fsspec's."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    shown = RemotePath(base)  # named without credentials in the errors below
    try:
        return pafs.FileSystem.from_uri(base)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        if "Unrecognized filesystem type" not in str(exc):  # a scheme pyarrow knows, with options it refuses
            raise InputError(shown, f"not a usable URL: {scrub(str(exc), base)}") from None
    except OSError as exc:  # e.g. resolving the bucket's region (no region= and no endpoint_override=)
        raise InputError(shown, _problem(exc, base)) from None
    try:
        url_to_fs = importlib.import_module("fsspec.core").url_to_fs  # (an optional package, untyped)
    except ImportError:
        raise MissingDependencyError.of(f"a data folder at {urlsplit(base).scheme}:// URLs (pyarrow has no such "
                                        "filesystem)", "fsspec") from None
    try:
        fs, path = url_to_fs(base)
    except ImportError as exc:  # fsspec knows the scheme, its package is not installed (gcsfs, adlfs, ...)
        raise InputError(shown, f"no filesystem installed for this URL: {scrub(str(exc), base)}") from None
    except ValueError as exc:
        raise InputError(shown, f"neither pyarrow nor fsspec reads {urlsplit(base).scheme}:// URLs "
                                f"({scrub(str(exc), base)})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _problem(exc: BaseException, base: str) -> str:
    """What a failed request says, scrubbed, with what it most likely means in front."""
    message = scrub(" ".join(str(exc).split()), base)
    upper = message.upper()
    if "NETWORK_CONNECTION" in upper or "COULD NOT CONNECT" in upper or "COULDN'T CONNECT" in upper \
            or "CURLCODE" in upper or "TIMED OUT" in upper or "COULD NOT RESOLVE" in upper:
        query = dict(parse_qsl(urlsplit(base).query))
        where = f" at {query['endpoint_override']}" if "endpoint_override" in query else ""
        return f"cannot reach the object store{where}: {message}"
    if "ACCESS_DENIED" in upper or "ACCESSDENIED" in upper or "INVALIDACCESSKEYID" in upper \
            or "SIGNATUREDOESNOTMATCH" in upper or "FORBIDDEN" in upper or "HTTP STATUS 403" in upper:
        return ("access denied: check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                f"or the machine's role) and the bucket's permissions: {message}")
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper:
        return f"no such bucket: {message}"
    return f"cannot be read from the object store: {message}"


@contextlib.contextmanager
def remote_errors(path: RemotePath) -> Iterator[None]:
    """Within it, a failed request on ``path`` is an :class:`InputError` naming it; a missing object is not.

    ``FileNotFoundError`` passes through (the caller knows what a missing file means);
    any other ``OSError`` or Arrow error becomes an :class:`InputError` whose message says
    what it most likely means (unreachable, access denied, no such bucket), scrubbed of credentials.
    """
    import pyarrow as pa

    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise InputError(path, _problem(exc, path.base)) from None


# ---------------------------------------------------------------- locations as given
def data_path(location: str | os.PathLike[str] | RemotePath) -> DataPath:
    """A location as given: a :class:`RemotePath` for a URL, a :class:`Path` otherwise (``file://`` too).

    Nothing is contacted: the filesystem is built when the path is first read.
    """
    if isinstance(location, RemotePath):
        return location
    if is_url(location):
        text = str(location)
        parts = urlsplit(text)
        if parts.scheme.lower() == "file":
            return Path(unquote(parts.path))
        return RemotePath(text.rstrip("/") if not parts.query else text)
    return Path(location)


def data_folder(location: str | os.PathLike[str] | RemotePath) -> DataPath:
    """:func:`data_path`, a local folder made absolute (tasks may run in other working directories)."""
    path = data_path(location)
    return path.resolve() if isinstance(path, Path) else path


def locator(path: DataPath) -> str:
    """The text :func:`data_path` turns back into ``path``: a local path, or the full URL (credentials included).

    For the processes that read it, never for a log or a file: :func:`describe` is what is shown.
    """
    if isinstance(path, Path):
        return str(path)
    parts = urlsplit(path.base)
    joined = parts.path.rstrip("/") + ("/" + path.rel if path.rel else "")
    return urlunsplit((parts.scheme, parts.netloc, joined, parts.query, parts.fragment))


def describe(location: str | os.PathLike[str] | RemotePath) -> str:
    """How a location is recorded and shown: a local path as is, a URL without credentials (SAFE_QUERY kept)."""
    if isinstance(location, RemotePath):
        return location.describe()
    if is_url(location):
        return _redacted(str(location), keep_query=True)
    return str(location)


def local_output(path: str | os.PathLike[str]) -> Path:
    """``path`` as a local :class:`Path`; :class:`OutputError` for a URL (an output is written locally)."""
    if is_url(path) and urlsplit(str(path)).scheme.lower() != "file":
        shown = _redacted(str(path), keep_query=False)
        raise OutputError(f"{shown}: the output must be a local path (a data folder may be a URL, an output may "
                          "not): write it locally, then copy it where it is wanted")
    return Path(unquote(urlsplit(str(path)).path)) if is_url(path) else Path(path)


def path_argument(text: str) -> Path | str:
    """A command line's path argument: a :class:`Path`, or a URL kept as it is (``Path`` would fold its ``//``)."""
    return text if is_url(text) else Path(text)


# ---------------------------------------------------------------- reading
def open_input(path: DataPath, stream: bool = False) -> Any:
    """What pyarrow's readers take for ``path``: the local path itself, or the filesystem's input file.

    ``stream``: a sequential stream (CSV) instead of a random-access file (Parquet). A
    missing file raises ``FileNotFoundError`` (for a URL: on opening, as for a local one).
    """
    if isinstance(path, Path):
        return path
    with remote_errors(path):
        fs = path.filesystem
        return fs.open_input_stream(path.key) if stream else fs.open_input_file(path.key)


def read_bytes(path: DataPath) -> bytes:
    """The whole of a (small) file: a manifest, a CSV table."""
    if isinstance(path, Path):
        return path.read_bytes()
    with remote_errors(path), path.filesystem.open_input_stream(path.key) as fh:
        return bytes(fh.read())


def read_blocks(path: DataPath, size: int = 1 << 20) -> Iterator[memoryview | bytes]:
    """The bytes of a file in blocks of ``size`` (for a digest), without holding it whole."""
    if isinstance(path, Path):
        buf = bytearray(size)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                yield view[:n]
        return
    with remote_errors(path), path.filesystem.open_input_stream(path.key) as fh:
        while block := fh.read(size):
            yield block


def stamp(path: DataPath) -> tuple[int, int | None] | None:
    """``(size, mtime_ns)`` of a file, or None when it is missing: what says a cached read is stale."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return int(st.st_size), st.st_mtime_ns


# ---------------------------------------------------------------- listings: one request for many files
def list_files(folder: RemotePath, recursive: bool = True) -> dict[RemotePath, Stat]:
    """Every file in ``folder`` (and below, with ``recursive``) with its size and modification time.

    One listing (a request per thousand objects on S3) instead of a request per file; a
    missing folder lists nothing; hidden files and folders (``.name``) are left out.
    """
    import pyarrow.fs as pafs

    return {path: Stat(int(info.size), info.mtime_ns) for path, info in folder._entries(recursive)
            if info.type == pafs.FileType.File and not any(p.startswith(".") for p in path.rel.split("/"))}


class Listing:
    """Files found by :func:`list_files`, indexed by folder: ``stat`` and one-level ``glob`` without a request."""

    def __init__(self, files: Mapping[RemotePath, Stat]):
        self.files = dict(files)
        self._children: dict[RemotePath, set[RemotePath]] = {}
        for path in self.files:
            child = path
            while child.parent != child:  # up to the data folder, which is its own parent
                kids = self._children.setdefault(child.parent, set())
                if child in kids:
                    break
                kids.add(child)
                child = child.parent

    def stat(self, path: RemotePath) -> Stat | None:
        """The file's size and modification time, or None when the listing has no such file."""
        return self.files.get(path)

    def glob(self, folder: RemotePath, pattern: str) -> list[RemotePath]:
        """The files and folders directly in ``folder`` whose names match ``pattern``, sorted."""
        return sorted(p for p in self._children.get(folder, ()) if fnmatchcase(p.name, pattern))


def relative(path: DataPath, root: DataPath) -> str:
    """``path`` below ``root`` as ``a/b/c``; :class:`ValueError` when it is not below it."""
    if isinstance(path, RemotePath) and isinstance(root, RemotePath):
        return path.relative_to(root).as_posix()
    if isinstance(path, Path) and isinstance(root, Path):
        return path.relative_to(root).as_posix()
    raise ValueError(f"{path} is not below {root}")


def relative_name(name: str, root: DataPath) -> str:
    """A file named as ``str(path)`` shows it, relative to ``root`` (as given when it is not below it)."""
    if isinstance(root, Path):
        try:
            return str(Path(name).relative_to(root))
        except ValueError:
            return name
    prefix = str(root).rstrip("/") + "/"
    return name[len(prefix):] if name.startswith(prefix) else name


def sort_paths(paths: Iterable[DataPath]) -> list[DataPath]:
    """``sorted(paths)``: local paths in :class:`Path` order, remote ones by URL (a list never mixes them)."""
    return sorted(paths)
