"""Recording files: one :class:`AudioFile` per speaker, streamed to disk as audio arrives.

Every file lies on the recording's timeline (sample 0 = the moment listening started):
:meth:`AudioFile.write` puts each frame at its :attr:`~AudioFrame.position`, fills the gap
before it with silence and never lets a late or duplicate frame shift what follows. So all
files of one recording start at the same instant, and :meth:`AudioFile.pad_to` makes them end
at the same sample: they can be laid on top of each other in any editor.

Formats
-------
- :class:`WaveAudioFile`: 48 kHz stereo 16-bit PCM; the header is rewritten every half second,
  so a reader can open the file mid-recording and a killed process leaves a playable file.
  Past 4 GiB it turns into RF64. :func:`repair_wav` fixes the header of a file cut mid-write.
- :class:`FLACAudioFile`: lossless, encoded in-process with PyAV's ``flac`` encoder.
- :class:`MP3AudioFile`: LAME (``libmp3lame`` inside PyAV's wheel), constant bitrate, gapless
  (the LAME tag tells decoders to drop the encoder delay, so sample 0 is sample 0).
- :class:`OggOpusAudioFile`: the received Opus packets stored as they came (no decoding), in an
  Ogg Opus stream written by hand (:mod:`.ogg`).
- :class:`MatroskaAudioFile`: Opus re-encoded by PyAV, in live Matroska.
- :class:`OggVorbisAudioFile`: Vorbis, encoded and put in Ogg by libsndfile (``soundfile``).
- :class:`M4AAudioFile`: AAC by PyAV, in fragmented MP4.

Silence is cheap: WAV gaps are holes in a sparse file, FLAC and MP3 gaps are hand-made silent
frames (a FLAC CONSTANT frame, an MP3 frame with no spectral data), Ogg Opus gaps are Opus
silence packets; the encoders only see short gaps. Memory stays bounded whatever the gap, and
two hours of silence take well under a second to write (MP3: the time to write its 115 MB of
constant-bitrate frames at 128 kbit/s). Matroska, M4A and Ogg Vorbis are the exceptions: their
encoders are fed the silence (2.5-3.7 ms of CPU a second of it, 9-13 s for an hour).

Names
-----
:func:`render_filename` turns a template such as ``"{start:%Y%m%d-%H%M%S}-{user_name}-{user_id}"``
into one safe file name (no separators, no reserved Windows names, at most 255 bytes) and
:func:`unique_path` picks a name nobody uses yet.

Where things are
----------------
- :mod:`.naming`: file names; :mod:`.output`: the raw file every format writes through;
- :mod:`.base`: :class:`AudioFile`, the placement and error handling all formats share, and the
  hooks a format fills in;
- :mod:`.wav`, :mod:`.flac` (with :mod:`.flac_bits`, FLAC's CRCs and hand-made frames),
  :mod:`.mp3`, :mod:`.matroska` and :mod:`.m4a` (on :mod:`.av_encoded`, the PyAV plumbing), :mod:`.oggopus`
  (on :mod:`.ogg`, the Ogg page writer), :mod:`.vorbis`: one module per format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from .base import AudioFile, RecordingError
from .flac import FLACAudioFile
from .m4a import M4AAudioFile
from .matroska import MatroskaAudioFile
from .mp3 import MP3AudioFile
from .naming import render_filename, sanitize_filename, unique_path
from .oggopus import OggOpusAudioFile
from .rotating import RotatingAudioFile
from .vorbis import OggVorbisAudioFile
from .wav import WaveAudioFile, repair_wav

__all__ = (
    "FORMATS",
    "AudioFile",
    "FLACAudioFile",
    "M4AAudioFile",
    "MP3AudioFile",
    "MatroskaAudioFile",
    "OggOpusAudioFile",
    "OggVorbisAudioFile",
    "RecordingError",
    "RotatingAudioFile",
    "WaveAudioFile",
    "render_filename",
    "repair_wav",
    "sanitize_filename",
    "unique_path",
)


#: File classes by format name, for sinks that take a format as a string.
FORMATS: Final[Mapping[str, type[AudioFile]]] = {
    "wav": WaveAudioFile,
    "flac": FLACAudioFile,
    "mp3": MP3AudioFile,
    "opus": OggOpusAudioFile,
    "mka": MatroskaAudioFile,
    "ogg": OggOpusAudioFile,
    "vorbis": OggVorbisAudioFile,
    "m4a": M4AAudioFile,
}
