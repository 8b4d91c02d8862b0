"""Our own OpenVINO operations' library: native.cpp (attention.cpp's paged attention, matmul.cpp's
int4 matmul) built here, at first use on a machine, with the system's g++ against the headers and
TBB that the OpenVINO wheel ships (a few seconds, once: the library is kept beside the
compiled-model cache, keyed by the sources, the OpenVINO version and this CPU). Without a compiler,
or where a build fails, the plugin's own operations stay (attention.py, matmul.py): the same results.

The library is loaded into a Core of this module's own, which only reads our operations' one-node
IRs (`new_node`), never into the Core that compiles: OpenVINO's IR reader shares its extensions
between threads, so an extension in the compiling Core crashed the runtime's parallel compiles. The
compiled model needs none: the plugin runs each node's own `evaluate`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import openvino as ov

from .tuning import machine_key

SOURCE = Path(__file__).with_name("native.cpp")
SOURCES = [SOURCE, SOURCE.with_name("attention.cpp"), SOURCE.with_name("matmul.cpp")]

_lock = threading.Lock()
_reader = None  # a Core that reads our operations' IR (False: the library cannot be had here)
_dll = None  # the library, for the registries its operations read


def library(build_dir: str | Path | None) -> Path | None:
    """This machine's build of native.cpp (built now if there is none), or None if it cannot be
    built here. build_dir: where builds are kept (None: a temporary folder, for this process)."""
    key = hashlib.sha256(b"".join(s.read_bytes() for s in SOURCES) + machine_key().encode()).hexdigest()[:16]
    folder = Path(build_dir) if build_dir else Path(tempfile.gettempdir()) / f"janus-ov-{os.getuid()}"
    target = folder / f"libjanus_native-{key}.so"
    if target.is_file():
        return target
    command = compile_command(SOURCE)
    if command is None:
        print("janus_ov: this OpenVINO wheel has no headers or libraries to build native.cpp with; "
              "using the plugin's own operations.")
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{target.name}.{os.getpid()}.{threading.get_ident()}"
        subprocess.run([*command, "-shared", "-fPIC", "-o", str(partial)], check=True, capture_output=True, text=True,
                       timeout=300)
        os.replace(partial, target)  # whole or absent: a reader never loads a half-written library
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or err
        print(f"janus_ov: could not build native.cpp ({str(detail).strip()[:300]}); using the plugin's own operations.")
        return None
    return target


def compile_command(source: Path) -> list[str] | None:
    """g++ compiling `source` for this CPU against the OpenVINO wheel's headers, core library and TBB
    (add -o and, for a library, -shared -fPIC); None if the wheel has no headers or libraries."""
    import openvino

    root = Path(openvino.__file__).parent
    core_lib = sorted((root / "libs").glob("libopenvino.so.*"))
    tbb_lib = sorted((root / "libs").glob("libtbb.so.*"))
    if not (core_lib and tbb_lib and (root / "include" / "openvino" / "op" / "op.hpp").is_file()):
        return None
    return ["g++", "-O3", "-march=native", "-std=c++17", "-fopenmp-simd", f"-I{root / 'include'}", str(source),
            f"-L{root / 'libs'}", f"-l:{core_lib[0].name}", f"-l:{tbb_lib[0].name}", f"-Wl,-rpath,{root / 'libs'}"]


def load(build_dir: str | Path | None) -> ctypes.CDLL | None:
    """The library, built if need be and loaded for reading our operations' IR; None where it cannot be had."""
    global _reader, _dll
    with _lock:
        if _reader is None:
            path = library(build_dir)
            if path is None:
                _reader = False
                return None
            reader = ov.Core()
            reader.add_extension(str(path))
            # The same file OpenVINO loaded, opened here too for its registries: the same loaded copy.
            _dll = ctypes.CDLL(str(path))
            _dll.janus_attention_open.restype = ctypes.c_int
            _dll.janus_attention_bind.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                  ctypes.c_int64, ctypes.c_int, ctypes.c_int]
            if hasattr(_dll, "janus_matmul_pack"):  # built where the CPU has AVX-512 VNNI
                _dll.janus_matmul_pack.restype = ctypes.c_int64
                _dll.janus_matmul_pack.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2
                _dll.janus_matmul_forget.argtypes = [ctypes.c_int64]
                _dll.janus_matmul_amx_rows.restype = ctypes.c_bool
                _dll.janus_matmul_amx_rows.argtypes = [ctypes.c_int]
            _reader = reader
    return _dll or None


def loaded() -> ctypes.CDLL | None:
    """The library if `load` has loaded it, else None."""
    return _dll or None


def new_node(op_type: str, attributes: dict, inputs: list):
    """Our operation `op_type` with `attributes` on the f32 graph outputs `inputs` (read as one node of an
    IR, with the library: Python cannot construct a C++ operation directly), its output inferred on them."""
    inputs = [x.output(0) if isinstance(x, ov.Node) else x for x in inputs]
    dims = ["".join("<dim>-1</dim>" for _ in x.get_partial_shape()) for x in inputs]
    params = "".join(f'<layer id="{i}" name="in{i}" type="Parameter" version="opset1"><data element_type="f32" '
                     f'shape="{",".join("?" * len(x.get_partial_shape()))}"/><output><port id="0" precision="FP32">{d}'
                     '</port></output></layer>' for i, (x, d) in enumerate(zip(inputs, dims)))
    n = len(inputs)
    ports = "".join(f'<port id="{i}">{d}</port>' for i, d in enumerate(dims))
    data = " ".join(f'{k}="{v}"' for k, v in attributes.items())
    edges = "".join(f'<edge from-layer="{i}" from-port="0" to-layer="{n}" to-port="{i}"/>' for i in range(n))
    xml = ('<?xml version="1.0"?><net name="t" version="11"><layers>' + params +
           f'<layer id="{n}" name="op" type="{op_type}" version="janus_ov"><data {data}/><input>{ports}</input>'
           f'<output><port id="{n}" precision="FP32"/></output></layer>'
           f'<layer id="{n + 1}" name="out" type="Result" version="opset1"><input><port id="0"/></input></layer>'
           f'</layers><edges>{edges}<edge from-layer="{n}" from-port="{n}" to-layer="{n + 1}" to-port="0"/></edges></net>')
    with _lock:
        template = _reader.read_model(xml, ov.Tensor(ov.Type.u8, [0]))  # a weights tensor: `xml` is the IR's text
    node = next(op for op in template.get_ordered_ops() if op.get_type_name() == op_type)
    node.set_arguments(inputs)
    node.validate_and_infer_types()
    return node
