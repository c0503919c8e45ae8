from .. import _Unavailable

SubtitleStream = _Unavailable
