"""Rewind snapshots on disk: streamed into a safetensors file, read back memory-mapped."""

from __future__ import annotations

from .files import mmap_safetensors, write_safetensors_streaming

__all__ = ["mmap_safetensors", "write_safetensors_streaming"]
