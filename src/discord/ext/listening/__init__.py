"""discord.ext.listening: voice receive for discord.py.

Hear every member of a voice channel (transport and DAVE end-to-end decryption), decode
Opus in worker processes, in order per speaker, and hand sample-aligned audio to sinks that
write files or feed your code::

    from discord.ext import listening

    vc = await channel.connect(cls=listening.VoiceClient)
    vc.listen(listening.AudioFileSink(listening.WaveAudioFile, "recordings"))
"""

from __future__ import annotations

__version__ = "0.1.0"

from .captions import TranscriptWriter
from .file_sink import AudioFileSink, Mixer
from .files import (
    FORMATS,
    AudioFile,
    FLACAudioFile,
    M4AAudioFile,
    MatroskaAudioFile,
    MP3AudioFile,
    OggOpusAudioFile,
    OggVorbisAudioFile,
    RecordingError,
    RotatingAudioFile,
    WaveAudioFile,
    repair_wav,
)
from .filters import ConditionalFilter, SinkFilter, TimedFilter, UserFilter, VolumeTransformer
from .frames import AudioFrame, FrameKind
from .opus import OpusDecoder, OpusEncoder
from .pcm import PCMConverter, PCMFormat
from .pool import AudioProcessPool, init_audio_processing_pool
from .redis_sink import RedisStreamSink
from .redis_stream import StreamMember, StreamRecorder, StreamWorker
from .redis_worker import RedisWorker, StreamLease
from .rtp import (
    ApplicationDefined,
    Feedback,
    Goodbye,
    ReceiverReport,
    ReportBlock,
    RTCPMessageType,
    RTCPPacket,
    SenderReport,
    SourceDescription,
)
from .sink import AudioHandlingSink, AudioSink, FanOutSink
from .sphinx import PocketSphinxRecognizer
from .stats import DropReason, ListenStats, UserStats
from .stream import AfterDuration, AfterSilence, AudioStream, MixedFrame, StreamFrame, Subscription, Utterance
from .transcribe import Recognition, Recognizer, Transcriber, Transcript, Word, transcribe
from .vad import SileroVAD, VoiceActivityDetector, WebRTCVAD
from .voice_client import VoiceClient
from .voice_commands import CommandMatch, CommandRecognizer, VoiceCommand, VoiceCommands
from .whisper import WhisperRecognizer

__all__ = (
    "FORMATS",
    "AfterDuration",
    "AfterSilence",
    "ApplicationDefined",
    "AudioFile",
    "AudioFileSink",
    "AudioFrame",
    "AudioHandlingSink",
    "AudioProcessPool",
    "AudioSink",
    "AudioStream",
    "CommandMatch",
    "CommandRecognizer",
    "ConditionalFilter",
    "DropReason",
    "FLACAudioFile",
    "FanOutSink",
    "Feedback",
    "FrameKind",
    "Goodbye",
    "ListenStats",
    "M4AAudioFile",
    "MP3AudioFile",
    "MatroskaAudioFile",
    "MixedFrame",
    "Mixer",
    "OggOpusAudioFile",
    "OggVorbisAudioFile",
    "OpusDecoder",
    "OpusEncoder",
    "PCMConverter",
    "PCMFormat",
    "PocketSphinxRecognizer",
    "RTCPMessageType",
    "RTCPPacket",
    "ReceiverReport",
    "Recognition",
    "Recognizer",
    "RecordingError",
    "RedisStreamSink",
    "RedisWorker",
    "ReportBlock",
    "RotatingAudioFile",
    "SenderReport",
    "SileroVAD",
    "SinkFilter",
    "SourceDescription",
    "StreamFrame",
    "StreamLease",
    "StreamMember",
    "StreamRecorder",
    "StreamWorker",
    "Subscription",
    "TimedFilter",
    "Transcriber",
    "Transcript",
    "TranscriptWriter",
    "UserFilter",
    "UserStats",
    "Utterance",
    "VoiceActivityDetector",
    "VoiceClient",
    "VoiceCommand",
    "VoiceCommands",
    "VolumeTransformer",
    "WaveAudioFile",
    "WebRTCVAD",
    "WhisperRecognizer",
    "Word",
    "init_audio_processing_pool",
    "repair_wav",
    "transcribe",
)
