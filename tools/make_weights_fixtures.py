#!/usr/bin/env python3
"""Checkpoints in every layout torch.save writes, made without torch, for the weights
reader's tests (formats/tests/weights_hostile.rs, torch_layout_fixtures_load_to_the_same_values).

    python3 tools/make_weights_fixtures.py        # -> formats/tests/fixtures/weights/

torch is not needed: this script reproduces torch's byte layout with the standard
`pickle` module, which is what torch.save itself uses (torch/serialization.py). Stand-in
objects carry torch's names (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`,
...) so the pickler writes the same GLOBALs; tensors reduce exactly as
`torch.Tensor._reduce_ex_internal` does (storage, offset, size, stride, requires_grad,
OrderedDict() hooks), parameters as `torch.nn.Parameter.__reduce_ex__` does
(`_rebuild_parameter`), a state dict is a `collections.OrderedDict` with a `_metadata`
attribute (BUILD after SETITEMS), and storages go through `persistent_id` as in
torch 2.x's `_save` (zip) and `_legacy_save`:

  zip    (torch >= 1.6): `<name>/data.pkl`, `.format_version`, `.storage_alignment`,
         `byteorder`, `data/<key>` (keys "0", "1", ... in first-use order), `version`,
         `.data/serialization_id`, all stored uncompressed; persistent id
         ('storage', torch.FloatStorage, key, 'cpu', numel).
         (torch also pads local headers so data starts 64-byte aligned; readers do not
         depend on it and neither do we.)
  legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): pickles of the
         magic number 0x1950a86a20f9469cfc6c, protocol version 1001 and the sys info
         dict, the object pickle, the sorted list of storage keys, then per storage an
         int64 element count and the raw little-endian bytes; persistent id
         ('storage', torch.FloatStorage, str(address), 'cpu', numel, None).

The record layout was checked against deit_plain_small.pth of
tools/make_model_fixtures.py (written by torch 2.15.0): same record names and order, the
same opcode sequence for a state dict under protocol 2 (`python3 -m pickletools`).
Files: zip_p2.pth (bare state dict, protocol 2, torch's default), zip_p4.pth
({'model': sd}, pickle_protocol=4), legacy_p2.pt ({'state_dict': sd, 'epoch': 3}) and
legacy_p4.pt (bare, protocol 4), plus expected.json (the values each must load to).
"""
import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

OUT = os.path.join(os.path.dirname(__file__), "..", "formats", "tests", "fixtures", "weights")

# --- stand-ins carrying torch's names -------------------------------------------------
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils
torch._utils = torch_utils


def _named(module, fn):
    fn.__module__ = module.__name__
    fn.__qualname__ = fn.__name__
    setattr(module, fn.__name__, fn)
    return fn


@lambda f: _named(torch_utils, f)
def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks):
    raise RuntimeError("never called")


@lambda f: _named(torch_utils, f)
def _rebuild_parameter(data, requires_grad, backward_hooks):
    raise RuntimeError("never called")


STORAGE_TYPES = {}
for cls_name, fmt in [("FloatStorage", "<f"), ("HalfStorage", "<e"), ("DoubleStorage", "<d"),
                      ("LongStorage", "<q")]:
    cls = type(cls_name, (), {})
    cls.__module__ = "torch"
    setattr(torch, cls_name, cls)
    STORAGE_TYPES[cls_name] = (cls, fmt)


class Storage:
    """A typed storage: its torch class and its elements."""
    _next_address = 94_000_000_000_000

    def __init__(self, cls_name, values):
        self.cls, self.fmt = STORAGE_TYPES[cls_name]
        self.values = values
        Storage._next_address += 4096
        self.address = Storage._next_address  # what `storage._cdata` is in torch

    def numel(self):
        return len(self.values)

    def raw(self):
        return b"".join(struct.pack(self.fmt, v) for v in self.values)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, proto):
        # torch.Tensor._reduce_ex_internal, CPU dense case
        return (_rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                 collections.OrderedDict()))


class Parameter:
    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, proto):
        # torch.nn.Parameter.__reduce_ex__ without hooks or state
        return (_rebuild_parameter, (self.data, True, collections.OrderedDict()))


# --- the tensors ----------------------------------------------------------------------
def make_state_dict():
    a = Storage("FloatStorage", [0.5, -1.0, 2.25, 3.0, -4.5, 5.0])
    h = Storage("HalfStorage", [1.5, -0.25, 1024.0, 0.0])
    d = Storage("DoubleStorage", [0.125, 7.0])
    n = Storage("LongStorage", [12])
    p = Storage("FloatStorage", [9.0, 8.0, 7.0])
    sd = collections.OrderedDict()
    sd["a"] = Tensor(a, 0, (2, 3), (3, 1))
    sd["a_t"] = Tensor(a, 0, (3, 2), (1, 3))       # a.t(): shares a's storage
    sd["a_row1"] = Tensor(a, 3, (3,), (1,))        # a[1]: storage offset 3
    sd["h"] = Tensor(h, 0, (2, 2), (2, 1))
    sd["bn.running_var"] = Tensor(d, 0, (2,), (1,))
    sd["bn.num_batches_tracked"] = Tensor(n, 0, (), ())
    sd["module.p"] = Parameter(Tensor(p, 0, (3,), (1,)))
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])
    return sd


EXPECTED = {
    "a": ([2, 3], [0.5, -1.0, 2.25, 3.0, -4.5, 5.0]),
    "a_t": ([3, 2], [0.5, 3.0, -1.0, -4.5, 2.25, 5.0]),
    "a_row1": ([3], [3.0, -4.5, 5.0]),
    "h": ([2, 2], [1.5, -0.25, 1024.0, 0.0]),
    "bn.running_var": ([2], [0.125, 7.0]),
    "p": ([3], [9.0, 8.0, 7.0]),
}


# --- torch.serialization._save (zip) --------------------------------------------------
def save_zip(obj, path, protocol):
    serialized = {}
    id_map = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                key = id_map.setdefault(o.address, str(len(id_map)))
                serialized[key] = o
                return ("storage", o.cls, key, "cpu", o.numel())
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    name = os.path.splitext(os.path.basename(path))[0]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        def add(rec, data):
            info = zipfile.ZipInfo(f"{name}/{rec}", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, data)
        add("data.pkl", buf.getvalue())
        add(".format_version", b"1")
        add(".storage_alignment", b"64")
        add("byteorder", b"little")
        for key in sorted(serialized, key=int):
            add(f"data/{key}", serialized[key].raw())
        add("version", b"3\n")
        add(".data/serialization_id", b"0000000000000000000000000000000000000000")


# --- torch.serialization._legacy_save -------------------------------------------------
MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001


def save_legacy(obj, path, protocol):
    serialized = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, Storage):
                key = str(o.address)
                serialized.setdefault(key, o)
                return ("storage", o.cls, key, "cpu", o.numel(), None)
            return None

    sys_info = dict(protocol_version=PROTOCOL_VERSION, little_endian=True,
                    type_sizes=dict(short=2, int=4, long=4))
    with open(path, "wb") as f:
        pickle.dump(MAGIC_NUMBER, f, protocol=protocol)
        pickle.dump(PROTOCOL_VERSION, f, protocol=protocol)
        pickle.dump(sys_info, f, protocol=protocol)
        Pickler(f, protocol=protocol).dump(obj)
        keys = sorted(serialized.keys())
        pickle.dump(keys, f, protocol=protocol)
        f.flush()
        for key in keys:
            s = serialized[key]
            f.write(struct.pack("<q", s.numel()))  # THPStorage_writeFileRaw: numel, then data
            f.write(s.raw())


def main():
    os.makedirs(OUT, exist_ok=True)
    files = []

    def out(name):
        files.append(name)
        return os.path.join(OUT, name)

    save_zip(make_state_dict(), out("zip_p2.pth"), 2)
    save_zip({"model": make_state_dict()}, out("zip_p4.pth"), 4)
    save_legacy({"state_dict": make_state_dict(), "epoch": 3}, out("legacy_p2.pt"), 2)
    save_legacy(make_state_dict(), out("legacy_p4.pt"), 4)
    expected = {
        "files": files,
        "tensors": {k: {"shape": s, "values": v} for k, (s, v) in sorted(EXPECTED.items())},
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print("wrote", ", ".join(files), "to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
