from . import _Unavailable

InputContainer = OutputContainer = Container = _Unavailable


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable
