"""Tests for files.py: atomic writes, the safetensors header reader and writer, and the dtype table."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import pytest
import safetensors.torch
import torch

from torch_lottery import files
from torch_lottery.files import (
    DTYPE_NAMES,
    DTYPES,
    atomic_write,
    load_json,
    mmap_safetensors,
    read_safetensors,
    read_safetensors_header,
    write_safetensors_streaming,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raw_file(path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> None:
    """Write a safetensors-shaped file by hand: 8-byte length, header bytes, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


class RecordingFile(io.FileIO):
    """A real file that records how many bytes each read asked for (to check what a reader touches)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requested: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.requested.append(size)
        return super().read(size)

    def readinto(self, buffer) -> int:
        self.requested.append(len(buffer))
        return super().readinto(buffer)


# ----------------------------------------------------------------------------------------------------------------
# The dtype table
# ----------------------------------------------------------------------------------------------------------------


def test_dtype_table_covers_every_dtype_safetensors_torch_stores():
    assert set(DTYPE_NAMES) == set(safetensors.torch._TYPES)
    assert {DTYPE_NAMES[name] for name in DTYPE_NAMES} == set(safetensors.torch._TYPES.values())
    assert all(DTYPE_NAMES[name] == dtype for name, dtype in safetensors.torch._TYPES.items())
    assert {"F8_E4M3", "F8_E5M2", "C64", "U16", "U32", "U64"} <= set(DTYPE_NAMES)


def _sample(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(-3, 9, dtype=torch.float32).reshape(3, 4)
    if dtype == torch.bool:
        return values > 2
    if not dtype.is_floating_point and not dtype.is_complex and (dtype.is_signed is False):
        values = values.abs()
    return values.to(dtype)


@pytest.mark.parametrize("dtype", sorted(DTYPES, key=str), ids=str)
def test_every_dtype_round_trips_through_our_writer_and_safetensors_reader_and_back(dtype, tmp_path):
    tensors = {"x": _sample(dtype), "empty": torch.zeros(0, 2, dtype=dtype), "scalar": _sample(dtype)[1, 1]}
    ours = tmp_path / "ours.safetensors"
    write_safetensors_streaming(tensors, ours)
    theirs = tmp_path / "theirs.safetensors"
    safetensors.torch.save_file(tensors, theirs)
    for path in (ours, theirs):
        for loaded in (safetensors.torch.load_file(path), read_safetensors(path)[0], mmap_safetensors(path)):
            assert set(loaded) == set(tensors)
            for name, value in tensors.items():
                assert loaded[name].dtype == dtype and loaded[name].shape == value.shape
                got, want = loaded[name].reshape(-1), value.reshape(-1)
                assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name


def test_unsupported_dtype_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match=r"write_safetensors_streaming\(\): 'z' has dtype torch.complex128, which "
                                        r"safetensors cannot store; convert it to one of"):
        write_safetensors_streaming({"z": torch.zeros(2, dtype=torch.complex128)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_streamed_file_keeps_metadata_and_puts_wide_tensors_first(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"flags": torch.tensor([True, False, True]), "w": torch.randn(3, 5, dtype=torch.float64)}
    write_safetensors_streaming(tensors, path, metadata={"note": "hi", "json": '{"a": 1}'})
    with safetensors.safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"note": "hi", "json": '{"a": 1}'}
    header = read_safetensors_header(path)
    assert header.tensors["w"]["data_offsets"] == [0, 120]
    assert header.tensors["flags"]["data_offsets"] == [120, 123]
    assert header.data_start % 8 == 0 and header.file_size == path.stat().st_size
    with pytest.raises(TypeError, match="metadata must map str to str"):
        write_safetensors_streaming(tensors, path, metadata={"n": 1})


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------------


def test_two_concurrent_writers_of_one_file_never_mix(tmp_path):
    """Both writers are inside their write at the same time; the result is one writer's bytes, whole."""
    target = tmp_path / "shared.bin"
    both_half_written = threading.Barrier(2, timeout=30)
    temporaries: list[list[str]] = []
    errors: list[BaseException] = []
    payloads = {name: bytes([name]) * 300_000 for name in (1, 2)}

    def writer(name: int) -> None:
        try:
            with atomic_write(target) as f:
                f.write(payloads[name][:150_000])
                f.flush()
                both_half_written.wait()
                if name == 1:
                    temporaries.append(sorted(p.name for p in tmp_path.iterdir()))
                both_half_written.wait()
                f.write(payloads[name][150_000:])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(temporaries[0]) == 2 and all(name.endswith(".tmp") for name in temporaries[0])  # two distinct names
    assert target.read_bytes() in payloads.values()
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_many_concurrent_ticket_sized_writes_always_leave_a_whole_file(tmp_path):
    target = tmp_path / "t.safetensors"
    contents = {k: {"w": torch.full((64, 64), float(k))} for k in range(6)}
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for _ in range(5):
                write_safetensors_streaming(contents[k], target)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    value = float(read_safetensors(target)[0]["w"][0, 0])
    assert torch.equal(read_safetensors(target)[0]["w"], contents[int(value)]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


@pytest.mark.parametrize("length", [250, 255])
def test_a_long_but_valid_file_name_is_written(length, tmp_path):
    name = "n" * (length - len(".safetensors")) + ".safetensors"
    assert len(name) == length
    write_safetensors_streaming({"w": torch.ones(3)}, tmp_path / name)
    assert torch.equal(read_safetensors(tmp_path / name)[0]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_rewrite_keeps_the_file_mode_and_a_new_file_follows_the_umask(tmp_path):
    path = tmp_path / "f.bin"
    with atomic_write(path) as f:
        f.write(b"one")
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o640)
    with atomic_write(path) as f:
        f.write(b"two")
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o640


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_disk_full_at_fsync_is_an_oserror_naming_the_file_and_the_old_file_survives(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    write_safetensors_streaming({"w": torch.zeros(4)}, path)
    previous = path.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as caught:
        write_safetensors_streaming({"w": torch.ones(4)}, path, fn="save_ticket")
    assert caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert "save_ticket(): path=" in message and "t.safetensors" in message
    assert "No space left on device" in message and "free disk space" in message and "unchanged" in message
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


@pytest.mark.slow
def test_a_write_the_kernel_refuses_is_an_oserror_and_the_old_file_survives(tmp_path):
    """A real failing write: RLIMIT_FSIZE makes the kernel refuse bytes past 64 KiB (EFBIG), as a full disk would."""
    path = tmp_path / "t.safetensors"
    write_safetensors_streaming({"w": torch.zeros(8)}, path)
    previous = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import errno, resource, signal, torch
        from torch_lottery.files import write_safetensors_streaming
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
        try:
            write_safetensors_streaming({{"w": torch.ones(100_000)}}, {str(path)!r})
        except OSError as exc:
            print("errno", exc.errno, "|", exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"errno {errno.EFBIG} |"), proc.stdout
    assert "write_safetensors_streaming(): path=" in proc.stdout and "File too large" in proc.stdout
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_missing_folder_is_a_file_not_found_error_naming_the_destination(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"atomic_write\(\): path='.*no/such/f.bin' could not be written"):
        with atomic_write(tmp_path / "no" / "such" / "f.bin"):
            pass
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# The header reader: every malformed file is a ValueError before any tensor data is read
# ----------------------------------------------------------------------------------------------------------------


def _entry(start: int, end: int, shape: list, dtype: str = "U8") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


@pytest.mark.parametrize(
    "header, data, match",
    [
        (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}', b"", "non-finite number Infinity"),
        (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}', b"", "non-finite number NaN"),
        (b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}}', b"", r"data_offsets=\[0, inf\] is not"),
        ({"w": _entry(0, 2**64, [1])}, b"", r"data_offsets=\[0, 18446744073709551616\] is not \[start, end\]"),
        ({"w": _entry(0, 4, [2**63, 2**63], "F32")}, b"\0" * 4, r"needs \d+ bytes but data_offsets=\[0, 4\] span 4"),
        (b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, ' + b"9" * 5000 + b"]}}", b"", "unreadable JSON"),
        (b"[" * 100_000 + b"]" * 100_000, b"", "nested too deeply"),
        (b'{"a": {}, "a": {}}', b"", "the key 'a' appears twice"),
        (b"\xff\xfe{}", b"", "unreadable JSON"),
        (b"[1, 2]", b"", "header that is not a JSON object"),
        ({"w": _entry(0, 2, [2], "F99")}, b"ab", r"dtype='F99' is not one of"),
        ({"w": _entry(0, 2, [True, 2])}, b"ab", r"shape=\[true, 2\]|shape=\[True, 2\]"),
        ({"w": _entry(0, 2, [-2])}, b"ab", r"shape=\[-2\] is not a list of sizes"),
        ({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2], "extra": 1}}, b"ab", "expected exactly the keys"),
        ({"w": _entry(2, 1, [1])}, b"ab", r"data_offsets=\[2, 1\] is not"),
        ({"a": _entry(0, 2, [2]), "b": _entry(3, 4, [1])}, b"abcd", "holes or overlaps"),
        ({"a": _entry(0, 2, [2]), "b": _entry(1, 3, [2])}, b"abc", "holes or overlaps"),
        ({"a": _entry(0, 2, [2])}, b"abc", "holds 3 bytes of tensor data but its header describes 2"),
        ({"a": _entry(0, 4, [4])}, b"abc", "holds 3 bytes of tensor data but its header describes 4"),
        ({"__metadata__": {"k": 1}}, b"", "metadata that is not a str -> str mapping"),
    ],
)
def test_malformed_headers_are_value_errors_in_the_librarys_form(header, data, match, tmp_path):
    path = tmp_path / "bad.safetensors"
    _raw_file(path, header, data)
    for reader in (read_safetensors_header, read_safetensors, mmap_safetensors):
        with pytest.raises(ValueError, match=match) as caught:
            reader(path)
        assert str(caught.value).startswith(f"{reader.__name__}(): path={str(path)!r} ")


@pytest.mark.parametrize("length", [2**63, files.MAX_HEADER_BYTES + 1, 1000])
def test_a_header_length_beyond_the_file_or_the_limit_is_refused_without_reading_it(length, tmp_path):
    path = tmp_path / "bad.safetensors"
    _raw_file(path, b"{}", length=length)
    with RecordingFile(path, "rb") as handle:
        with pytest.raises(ValueError, match=f"header length of {length} bytes that does not fit the file"):
            read_safetensors(handle)
        assert handle.requested == [8]


def test_a_huge_sparse_file_is_refused_before_its_data_is_read(tmp_path):
    path = tmp_path / "huge.safetensors"
    write_safetensors_streaming({"w": torch.ones(16)}, path)
    size = path.stat().st_size
    os.truncate(path, size + 64 * 2**30)  # 64 GiB more, a hole on disk
    with open(path, "rb") as f:
        header_bytes = 8 + struct.unpack("<Q", f.read(8))[0]
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with RecordingFile(path, "rb") as handle:
            with pytest.raises(ValueError, match=r"holds 68719476800 bytes of tensor data but its header describes 64"):
                read_safetensors(handle)
        with pytest.raises(ValueError, match="header describes 64; the file is truncated, extended or corrupt"):
            mmap_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5
    assert sum(handle.requested) == header_bytes  # the 8-byte length and the header, nothing else
    assert peak < 1_000_000


def test_a_header_that_claims_huge_tensors_matching_a_huge_sparse_file_reads_only_the_header(tmp_path):
    path = tmp_path / "claims.safetensors"
    nbytes = 32 * 2**30
    raw = json.dumps({"w": _entry(0, nbytes, [nbytes // 4], "F32")}).encode()
    _raw_file(path, raw)
    os.truncate(path, 8 + len(raw) + nbytes)
    with RecordingFile(path, "rb") as handle:
        header = read_safetensors_header(handle)
        assert header.tensors["w"]["shape"] == [nbytes // 4] and handle.requested == [8, len(raw)]


def _reader_finishes(call, seconds: float = 20.0) -> BaseException | None:
    """Run ``call`` in a thread; fail the test if it blocks (a FIFO read would wait for a writer forever)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # returned to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{call} blocked for {seconds} s"
    return outcome[0]


@pytest.mark.parametrize("reader", [read_safetensors_header, read_safetensors, mmap_safetensors])
def test_devices_and_fifos_are_refused_without_reading(reader, tmp_path):
    zero = tmp_path / "zero.safetensors"
    os.symlink("/dev/zero", zero)
    exc = _reader_finishes(lambda: reader(zero))
    assert isinstance(exc, ValueError) and "is a character device, not a regular file" in str(exc)
    assert str(exc).startswith(f"{reader.__name__}(): path={str(zero)!r}")
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    exc = _reader_finishes(lambda: reader(fifo))
    assert isinstance(exc, ValueError) and "is a FIFO, not a regular file" in str(exc)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        reader(tmp_path)


def test_an_open_device_file_is_refused_too():
    with open("/dev/zero", "rb") as handle:
        with pytest.raises(ValueError, match="is a character device"):
            read_safetensors_header(handle)


def test_reader_accepts_open_and_in_memory_files(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors_streaming({"w": torch.arange(6).reshape(2, 3)}, path, metadata={"k": "v"})
    with open(path, "rb") as handle:
        tensors, meta = read_safetensors(handle)
    assert torch.equal(tensors["w"], torch.arange(6).reshape(2, 3)) and meta == {"k": "v"}
    tensors, _ = read_safetensors(io.BytesIO(path.read_bytes()))
    assert torch.equal(tensors["w"], torch.arange(6).reshape(2, 3))


def test_each_tensor_is_read_once_from_its_offsets(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors_streaming({"a": torch.ones(1000), "b": torch.zeros(10, dtype=torch.int8)}, path)
    header = read_safetensors_header(path)
    with RecordingFile(path, "rb") as handle:
        read_safetensors(handle)
    assert handle.requested == [8, header.data_start - 8, 4000, 10]


def test_a_check_can_refuse_a_file_before_its_tensors_are_read(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors_streaming({"a": torch.ones(1000)}, path, metadata={"format": "other"})

    def refuse(header: files.SafetensorsHeader) -> None:
        raise ValueError(f"format={header.metadata['format']!r}")

    with RecordingFile(path, "rb") as handle:
        with pytest.raises(ValueError, match="format='other'"):
            read_safetensors(handle, check=refuse)
    assert len(handle.requested) == 2


def test_bool_tensors_with_other_bytes_are_refused(tmp_path):
    path = tmp_path / "b.safetensors"
    _raw_file(path, {"m": _entry(0, 3, [3], "BOOL")}, b"\x00\x01\x02")
    with pytest.raises(ValueError, match="bool tensor 'm' with bytes other than 0 and 1"):
        read_safetensors(path)


def test_safetensors_files_written_by_safetensors_read_back_exactly(tmp_path):
    path = tmp_path / "st.safetensors"
    tensors = {"a": torch.ones(3, dtype=torch.uint8), "b": torch.randn(5), "c": torch.arange(3)}
    safetensors.torch.save_file(tensors, path, metadata={"m": "1"})
    loaded, meta = read_safetensors(path)
    assert meta == {"m": "1"} and all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_load_json_is_strict_and_names_its_source():
    assert load_json(b'{"a": [1, 2.5]}', what="x", where="path='p'", fn="f") == {"a": [1, 2.5]}
    with pytest.raises(ValueError, match=r"^f\(\): path='p' has unreadable JSON in metadata entry 'round' \("):
        load_json("-Infinity", what="metadata entry 'round'", where="path='p'", fn="f")

