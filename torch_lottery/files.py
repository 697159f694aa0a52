"""Atomic writes and safetensors headers: the one place files are written and read.

Every file the package writes (ticket files, plain exports, disk snapshots, the reproduction's results) goes
through :func:`atomic_write`: a temporary file with a unique, short name in the destination's folder, flushed
and fsynced, then renamed over the destination with ``os.replace``, and the folder fsynced. A crash or an
error leaves the previous file (if any) untouched, and two writers of the same file never mix their bytes.

Every safetensors file the package reads goes through :func:`read_safetensors_header`, which checks the whole
header before any tensor data is read: a bounded header length, strict JSON (no ``NaN``/``Infinity``, no
duplicate keys), known dtypes, integer shapes and offsets in range, offsets that tile the data without holes
or overlaps and that end exactly at the end of the file. Only regular files are opened, so a symlink to
``/dev/zero`` or a FIFO is refused instead of read forever. :data:`DTYPES` is the one table of the dtypes
safetensors stores.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import struct
import tempfile
from types import MappingProxyType
from typing import IO, Any, BinaryIO, Callable, Iterator, Mapping, NamedTuple, Union

import torch
from torch import Tensor

__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "MAX_HEADER_BYTES",
    "SafetensorsHeader",
    "atomic_write",
    "load_json",
    "mmap_safetensors",
    "read_safetensors",
    "read_safetensors_header",
    "write_safetensors_streaming",
]

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, IO[bytes]]

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
_MAX_U64 = 2**64 - 1

# safetensors' names for torch dtypes (the same set as safetensors.torch), where this torch has the dtype.
_NAMES = (
    ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
    ("F8_E4M3", "float8_e4m3fn"), ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2", "float8_e5m2"), ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("C64", "complex64"),
    ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"),
    ("U64", "uint64"), ("U32", "uint32"), ("U16", "uint16"), ("U8", "uint8"),
    ("BOOL", "bool"),
)

#: torch dtype -> safetensors dtype name, for every dtype safetensors stores that this torch has.
DTYPES: Mapping[torch.dtype, str] = MappingProxyType(
    {getattr(torch, attr): name for name, attr in _NAMES if isinstance(getattr(torch, attr, None), torch.dtype)}
)
#: safetensors dtype name -> torch dtype (the inverse of :data:`DTYPES`).
DTYPE_NAMES: Mapping[str, torch.dtype] = MappingProxyType({name: dtype for dtype, name in DTYPES.items()})


# --------------------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it where ``/proc`` allows (``os.umask`` sets it briefly)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _new_file_mode(path: str) -> int:
    """The mode a rewritten file keeps (the old file's), or the mode ``open()`` would give a new one."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable where the platform allows it (not on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _os_error(exc: OSError, fn: str, path: PathLike, doing: str) -> OSError:
    """An ``OSError`` of the same errno (so the same subclass) whose message names the function and file."""
    reason = exc.strerror or str(exc)
    code = exc.errno if exc.errno is not None else errno.EIO
    hint = "free disk space or choose another path" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else (
        "check that the folder exists and is writable"
    )
    return OSError(
        code, f"{fn}(): path={os.fspath(path)!r} could not be written ({doing}: {reason}); {hint}; "
        "the previous file, if any, is unchanged"
    )


@contextlib.contextmanager
def atomic_write(path: PathLike, *, fn: str = "atomic_write") -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` in one step when the ``with`` block ends without an error.

    The bytes go to a temporary file with a unique short name (``.<first 40 characters of the name>.<random>.tmp``)
    in ``path``'s folder, so concurrent writers never share a temporary file and a valid 255-character file
    name never becomes too long. On exit the file is flushed and fsynced, given the old file's mode (or the
    mode a new file gets under the umask), renamed over ``path`` with ``os.replace`` and the folder fsynced.
    On any exception, Ctrl-C included, the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the destination file; its folder must exist.
        fn: the public function to name in error messages.

    Yields:
        A binary file object open for writing.

    Raises:
        OSError: (with the errno of the failure, e.g. ``ENOSPC`` for a full disk, so ``FileNotFoundError`` for
            a missing folder) if the temporary file cannot be created, written, synced or renamed.

    Example:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "results.json")
        >>> with atomic_write(target) as f:
        ...     _ = f.write(b'{"ok": true}')
        >>> open(target, "rb").read()
        b'{"ok": true}'
    """
    target = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(target)
    try:
        mode = _new_file_mode(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{base[:40]}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _os_error(exc, fn, path, "creating a temporary file") from exc
    doing = "writing"
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            doing = "syncing to disk"
            os.fsync(handle.fileno())
        doing = "renaming into place"
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _os_error(exc, fn, path, doing) from exc
        raise
    _fsync_directory(directory)


# --------------------------------------------------------------------------------------------------------------
# Writing safetensors
# --------------------------------------------------------------------------------------------------------------


def write_safetensors_streaming(
    tensors: Mapping[str, Tensor],
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    fn: str = "write_safetensors_streaming",
) -> None:
    """Write ``tensors`` as a safetensors file, atomically, one tensor in host memory at a time.

    ``safetensors.torch.save_file`` first turns every tensor into bytes, holding a second copy of the whole
    model; this writes the header, then each tensor's bytes in turn, so a model that does not fit in memory
    twice can still be saved. Tensors are stored widest element first, so with the 8-byte aligned header
    every tensor starts at a multiple of its element size and can be viewed in place from a memory map
    (:func:`mmap_safetensors`). The write goes through :func:`atomic_write`.

    Args:
        tensors: name -> tensor (any device; non-contiguous tensors are made contiguous one at a time).
        path: the destination file.
        metadata: ``str -> str`` entries for the header's ``__metadata__``.
        fn: the public function to name in error messages.

    Raises:
        TypeError: on a dtype safetensors cannot store (see :data:`DTYPES`), a non-string name or metadata
            that is not ``str -> str``; nothing is written.
        OSError: if the file cannot be written (``path`` is then left as it was).

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> write_safetensors_streaming({"w": torch.ones(2, 3)}, path, metadata={"note": "hi"})
        >>> read_safetensors(path)[1]
        {'note': 'hi'}
    """
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError(f"{fn}(): metadata must map str to str; convert values with str() or json.dumps()")
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())
    offset = 0
    for name in order:
        t = tensors[name]
        if not isinstance(name, str) or name == "__metadata__":
            raise TypeError(f"{fn}(): tensor name {name!r} is not allowed; use a str other than '__metadata__'")
        if t.dtype not in DTYPES:
            raise TypeError(
                f"{fn}(): {name!r} has dtype {t.dtype}, which safetensors cannot store; "
                f"convert it to one of {sorted(map(str, DTYPES))}"
            )
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_write(path, fn=fn) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            host = tensors[name].detach().to("cpu").contiguous()
            if host.numel():
                f.write(memoryview(host.reshape(-1).view(torch.uint8).numpy()))


# --------------------------------------------------------------------------------------------------------------
# Reading safetensors
# --------------------------------------------------------------------------------------------------------------


class SafetensorsHeader(NamedTuple):
    """A validated safetensors header.

    Attributes:
        tensors: name -> ``{"dtype": str, "shape": list[int], "data_offsets": [start, end]}`` in file order,
            offsets relative to ``data_start``.
        metadata: the ``__metadata__`` entries (``str -> str``; empty if absent).
        data_start: the absolute offset of the tensor data (8 + the header's length).
        file_size: the file's size in bytes, equal to ``data_start`` plus the end of the last tensor.
    """

    tensors: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def _describe_source(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"path={os.fspath(source)!r}"
    return f"file={getattr(source, 'name', type(source).__name__)!r}"


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def _check_regular(mode: int, where: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, f"{where} is a directory; pass a safetensors file")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise ValueError(f"{where} is {kind}, not a regular file; pass a safetensors file")


def _open_regular(path: PathLike, where: str) -> BinaryIO:
    """Open ``path`` for reading without blocking on a FIFO, and refuse anything but a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(os.fspath(path), flags)
    try:
        _check_regular(os.fstat(fd).st_mode, where)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _file_size(handle: IO[bytes], where: str) -> int:
    try:
        fileno = handle.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory file such as io.BytesIO
        return handle.seek(0, os.SEEK_END)
    info = os.fstat(fileno)
    _check_regular(info.st_mode, where)
    return info.st_size


def _read_exact(handle: IO[bytes], n: int, what: str, where: str, fn: str) -> bytearray:
    buf = bytearray(n)
    _read_into(handle, memoryview(buf), what, where, fn)
    return buf


def _read_into(handle: IO[bytes], view: memoryview, what: str, where: str, fn: str) -> None:
    """Fill ``view`` from ``handle``, in place, failing clearly if the file ends first."""
    got = 0
    while got < len(view):
        if hasattr(handle, "readinto"):
            n = handle.readinto(view[got:]) or 0
        else:
            chunk = handle.read(len(view) - got)
            n = len(chunk)
            view[got : got + n] = chunk
        if not n:
            raise ValueError(f"{fn}(): {where} ends inside {what} (read {got} of {len(view)} bytes); the file is "
                             "truncated or changed while it was read")
        got += n


def _no_constant(name: str) -> Any:
    raise ValueError(f"the non-finite number {name} is not allowed")


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def load_json(text: Union[str, bytes, bytearray], *, what: str, where: str, fn: str) -> Any:
    """Parse strict JSON (no ``NaN``/``Infinity``, no duplicate keys); any failure is one ``ValueError``.

    Args:
        text: the JSON text (``bytes`` must be UTF-8).
        what, where, fn: name the text, its source and the public function in the error message.

    Raises:
        ValueError: ``"<fn>(): <where> has unreadable JSON in <what> (<reason>); the file is corrupt ..."``
            for invalid UTF-8 or JSON, non-finite numbers, duplicate keys, integers too long to convert and
            nesting too deep to parse.

    Example:
        >>> load_json('{"a": [1, 2]}', what="the header", where="path='x'", fn="f")
        {'a': [1, 2]}
    """
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_pairs)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ValueError(
            f"{fn}(): {where} has unreadable JSON in {what} ({reason}); the file is corrupt or not written by "
            "torch_lottery or safetensors"
        ) from None


def _count(value: Any) -> int | None:
    """``value`` if it is a JSON integer in safetensors' u64 range, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_U64:
        return value
    return None


def _validate_entry(name: str, entry: Any, where: str, fn: str) -> tuple[int, int]:
    """Check one tensor's header entry; return its (start, end) data offsets."""
    bad = f"{fn}(): {where} has a malformed header entry {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{bad}: expected exactly the keys 'dtype', 'shape' and 'data_offsets'; the file is corrupt")
    dtype = DTYPE_NAMES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"{bad}: dtype={entry['dtype']!r:.40} is not one of {sorted(DTYPE_NAMES)}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or any(_count(d) is None for d in shape):
        raise ValueError(f"{bad}: shape={shape!r:.80} is not a list of sizes in 0..2**64-1; the file is corrupt")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) is not None for o in offsets)
            and offsets[0] <= offsets[1]):
        raise ValueError(
            f"{bad}: data_offsets={offsets!r:.80} is not [start, end] with 0 <= start <= end <= 2**64-1; "
            "the file is corrupt"
        )
    numel = 1
    for d in shape:  # saturating, so a header of huge sizes costs no huge integers
        numel = min(numel * d, _MAX_U64 + 1)
    nbytes = numel * dtype.itemsize
    if nbytes != offsets[1] - offsets[0]:
        raise ValueError(
            f"{bad}: shape {shape!r:.80} of {entry['dtype']} needs {nbytes} bytes but data_offsets={offsets!r} "
            f"span {offsets[1] - offsets[0]}; the file is corrupt"
        )
    return offsets[0], offsets[1]


def _parse_header(handle: IO[bytes], size: int, where: str, fn: str) -> SafetensorsHeader:
    if size < 8:
        raise ValueError(
            f"{fn}(): {where} is too short to be a safetensors file ({size} bytes); pass a safetensors file such "
            "as one written by save_ticket()"
        )
    handle.seek(0)
    (length,) = struct.unpack("<Q", _read_exact(handle, 8, "header length", where, fn))
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise ValueError(
            f"{fn}(): {where} has a header length of {length} bytes that does not fit the file ({size} bytes, "
            f"headers up to {MAX_HEADER_BYTES}); the file is truncated or not a safetensors file"
        )
    header = load_json(_read_exact(handle, length, "header", where, fn), what="its safetensors header",
                       where=where, fn=fn)
    if not isinstance(header, dict):
        raise ValueError(f"{fn}(): {where} has a safetensors header that is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{fn}(): {where} has metadata that is not a str -> str mapping; the file is corrupt")
    spans = sorted((_validate_entry(name, entry, where, fn), name) for name, entry in header.items())
    end = 0
    for (start, stop), name in spans:
        if start != end:
            raise ValueError(
                f"{fn}(): {where} has tensor {name!r} at data_offsets [{start}, {stop}] but the data before it "
                f"ends at {end}; holes or overlaps mean the file is corrupt"
            )
        end = stop
    data_start = 8 + length
    if data_start + end != size:
        raise ValueError(
            f"{fn}(): {where} holds {size - data_start} bytes of tensor data but its header describes {end}; "
            "the file is truncated, extended or corrupt"
        )
    return SafetensorsHeader(header, metadata, data_start, size)


def read_safetensors_header(source: Source, *, fn: str = "read_safetensors_header") -> SafetensorsHeader:
    """Read and validate a safetensors file's header, reading no tensor data.

    At most 8 bytes plus the header's length are read. The header length is bounded by
    :data:`MAX_HEADER_BYTES` and by the file's size, and the file's size must equal the end of the tensor
    data the header describes, so a truncated or padded file, or a header claiming huge tensors, is refused
    before anything else is read.

    Args:
        source: a path (only a regular file is opened; a FIFO is never waited on) or a binary file object
            open for reading (read from its start).
        fn: the public function to name in error messages.

    Returns:
        :class:`SafetensorsHeader`: the tensor entries, the ``__metadata__`` mapping, the data start offset and
        the file size.

    Raises:
        ValueError: ``"<fn>(): path='...' <problem>; <fix>"`` if the source is not a regular file or not a
            well-formed safetensors file (bad length, JSON, dtype, shape or offsets, size mismatch).
        OSError: if the file cannot be opened or read (``IsADirectoryError`` for a folder).

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> write_safetensors_streaming({"w": torch.ones(2, 3)}, path)
        >>> read_safetensors_header(path).tensors
        {'w': {'dtype': 'F32', 'shape': [2, 3], 'data_offsets': [0, 24]}}
    """
    where = _describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        with _open_regular(source, f"{fn}(): {where}") as handle:
            return _parse_header(handle, os.fstat(handle.fileno()).st_size, where, fn)
    return _parse_header(source, _file_size(source, f"{fn}(): {where}"), where, fn)


def _read_tensors(handle: IO[bytes], header: SafetensorsHeader, where: str, fn: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, entry in header.tensors.items():
        dtype = DTYPE_NAMES[entry["dtype"]]
        start, stop = entry["data_offsets"]
        if start == stop:
            out[name] = torch.empty(entry["shape"], dtype=dtype)
            continue
        raw = torch.empty(stop - start, dtype=torch.uint8)
        handle.seek(header.data_start + start)
        _read_into(handle, memoryview(raw.numpy()), f"tensor {name!r}", where, fn)
        if dtype == torch.bool and bool((raw > 1).any()):
            raise ValueError(
                f"{fn}(): {where} has bool tensor {name!r} with bytes other than 0 and 1; the file is corrupt"
            )
        out[name] = raw.view(dtype).reshape(entry["shape"])
    return out


def read_safetensors(
    source: Source,
    *,
    fn: str = "read_safetensors",
    check: Callable[[SafetensorsHeader], None] | None = None,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file into CPU tensors, validating the header before any tensor data is read.

    Each tensor's bytes are read into its own buffer straight from its ``data_offsets``: nothing beyond what
    the header describes is read, and the whole file is never held as one ``bytes`` object.

    Args:
        source: a path (regular files only) or a binary file object open for reading.
        fn: the public function to name in error messages.
        check: called with the validated header before any tensor data is read (to refuse a file by its
            metadata without reading its tensors); whatever it raises propagates.

    Returns:
        ``(tensors, metadata)``: name -> tensor in file order, and the ``__metadata__`` mapping.

    Raises:
        ValueError: as :func:`read_safetensors_header`, or if a bool tensor holds bytes other than 0 and 1.
        OSError: if the file cannot be opened or read.

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> write_safetensors_streaming({"w": torch.arange(3)}, path)
        >>> read_safetensors(path)[0]["w"]
        tensor([0, 1, 2])
    """
    where = _describe_source(source)
    if isinstance(source, (str, os.PathLike)):
        with _open_regular(source, f"{fn}(): {where}") as handle:
            header = _parse_header(handle, os.fstat(handle.fileno()).st_size, where, fn)
            if check is not None:
                check(header)
            return _read_tensors(handle, header, where, fn), header.metadata
    header = _parse_header(source, _file_size(source, f"{fn}(): {where}"), where, fn)
    if check is not None:
        check(header)
    return _read_tensors(source, header, where, fn), header.metadata


def mmap_safetensors(path: PathLike) -> dict[str, Tensor]:
    """Tensors of a safetensors file as read-only-in-spirit views of one private memory map.

    Pages are read from disk when touched and can be dropped again by the OS, so a snapshot held this way
    costs page cache, not resident memory. Writing to the tensors never reaches the file. The header is
    validated first (:func:`read_safetensors_header`); a tensor not aligned to its element size (a file
    written elsewhere) is copied.

    Raises:
        ValueError: if the file is not a regular, well-formed safetensors file.
        OSError: if it cannot be opened.

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> write_safetensors_streaming({"w": torch.ones(2)}, path)
        >>> mmap_safetensors(path)["w"]
        tensor([1., 1.])
    """
    header = read_safetensors_header(path, fn="mmap_safetensors")
    if header.file_size == header.data_start:  # no tensor data: nothing to map
        return {name: torch.empty(e["shape"], dtype=DTYPE_NAMES[e["dtype"]]) for name, e in header.tensors.items()}
    storage = torch.UntypedStorage.from_file(os.fspath(path), shared=False, nbytes=header.file_size)
    out: dict[str, Tensor] = {}
    for name, entry in header.tensors.items():
        dtype = DTYPE_NAMES[entry["dtype"]]
        start, end = entry["data_offsets"]
        if end == start:
            out[name] = torch.empty(entry["shape"], dtype=dtype)
            continue
        flat = torch.empty(0, dtype=torch.uint8).set_(storage, header.data_start + start, (end - start,), (1,))
        if (header.data_start + start) % dtype.itemsize:
            flat = flat.clone()  # misaligned (a file written elsewhere): this tensor is copied
        out[name] = flat.view(dtype).view(entry["shape"])
    return out
