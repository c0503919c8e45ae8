"""Import stub for PyAV, used only on the lent GPU machine where PyAV is not installed.

ComfyUI's comfy_api imports `av` at module level for its video types; the SPARE benchmark
never touches video, and PyAV's 36 MB wheel does not fit the 64 MiB that travels to the GPU
machine. bench/gpu/device.sh puts this folder on PYTHONPATH only when `import av` fails.
Anything that really uses PyAV raises ImportError.
"""
__version__ = "0.0.0+spare-bench-stub"
MESSAGE = "PyAV is not installed on this machine (bench/gpu/stubs/av is an import stub): video is unavailable"
time_base = 1000000


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise ImportError(MESSAGE)

    @classmethod
    def from_ndarray(cls, *args, **kwargs):
        raise ImportError(MESSAGE)


def open(*args, **kwargs):  # noqa: A001 - PyAV's name
    raise ImportError(MESSAGE)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable
