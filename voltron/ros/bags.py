"""`voltron ros bag2demos`: ROS bags (ROS 1 .bag, ROS 2 sqlite3 or MCAP) to the native demonstration HDF5.

For each bag (read with rosbags, no ROS install):
- episodes: the whole bag, or cut at every message on `bag.split_topic` (markers closer than `bag.split_min_gap_s`
  merge into one);
- alignment: ticks on a grid at `fps`, starting once every camera and state stream has a message; at each tick
  every stream contributes its latest message at or before the tick by `header.stamp` (the log time when a message
  has no header or a zero stamp);
- gaps: a tick whose latest message of a stream is older than `bag.gap_periods` grid periods is flagged; gaps are
  reported per stream and stored in the episode's attributes (they are kept, not interpolated);
- actions: action[t] is the command in force at tick t+1 (the latest message on `action.topic` at or before it) when
  the command topic is recorded, else the measured positions of `action.joints` at tick t+1 (the next state); the
  last tick has no next one, so an episode has one step fewer than ticks;
- bags missing a camera or state topic are skipped and reported, never silently filled.
Episodes stream into `voltron.datasets.demos.write_demos` one at a time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from voltron.errors import UserError
from voltron.ros import codecs
from voltron.ros.config import RobotConfig, normalize_type


@dataclass
class Stream:
    """One topic's messages in one bag, sorted by stamp."""

    topic: str
    msg_type: str
    stamps: np.ndarray  # (N,) float seconds, ascending
    log_ns: np.ndarray  # (N,) int64 bag log times, same order
    payloads: list | None = None  # decoded dicts (small topics); None for images, which are decoded on demand

    def latest(self, ticks: np.ndarray) -> np.ndarray:
        """Index of the latest message at or before each tick (-1 where none)."""
        return np.searchsorted(self.stamps, ticks, side="right") - 1


@dataclass
class EpisodeReport:
    bag: str
    episode: int  # index within the bag
    steps: int = 0
    start: float = 0.0  # first tick, robot-clock seconds
    action_source: str = ""
    language: str = ""
    head_trimmed_s: float = 0.0  # time from the episode's start to the first tick with every stream present
    gaps: dict[str, list[list[float]]] = field(default_factory=dict)  # stream -> [[from_s, to_s], ...] since start
    skipped: str | None = None

    def gap_ticks(self, fps: float) -> int:
        return sum(int(round((b - a) * fps)) + 1 for spans in self.gaps.values() for a, b in spans)


@dataclass
class ConversionReport:
    out: str
    fps: float
    episodes: list[EpisodeReport] = field(default_factory=list)

    @property
    def written(self) -> list[EpisodeReport]:
        return [e for e in self.episodes if e.skipped is None]

    @property
    def episodes_written(self) -> int:
        return len(self.written)

    def as_dict(self) -> dict:
        return {"out": self.out, "fps": self.fps, "episodes": [asdict(e) for e in self.episodes]}

    def summary(self) -> str:
        lines = [
            f"bag2demos: {len(self.episodes)} episode(s) found, {self.episodes_written} written "
            f"({sum(e.steps for e in self.written)} steps at {self.fps:g} fps) to {self.out}"
        ]
        for e in self.episodes:
            head = f"  {Path(e.bag).name}#{e.episode}:"
            if e.skipped:
                lines.append(f"{head} SKIPPED: {e.skipped}")
                continue
            gaps = "; ".join(
                f"{name} {', '.join(f'{a:.2f}-{b:.2f}s' for a, b in spans)}" for name, spans in e.gaps.items()
            )
            lines.append(
                f"{head} {e.steps} steps, actions from {e.action_source}"
                + (f", head trimmed {e.head_trimmed_s:.2f}s" if e.head_trimmed_s > 0 else "")
                + (f", GAPS: {gaps}" if gaps else "")
            )
        return "\n".join(lines)


# --- reading ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _open_reader(path: Path):
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    try:
        # The default typestore only matters for ROS 2 bags recorded without message definitions.
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY))
        reader.open()
    except AnyReaderError as err:
        raise UserError(
            f"not a readable ROS bag ({err})",
            source=path,
            expected="a ROS 1 .bag file or a ROS 2 bag directory (sqlite3 or MCAP) that rosbags can open",
        ) from err
    try:
        yield reader
    finally:
        reader.close()


def _read_streams(reader, wanted: dict[str, str], image_topics: set[str], marker_topics: set[str]) -> dict[str, Stream]:
    """One pass over the bag: stamps of every wanted topic, decoded payloads of the small ones.

    Marker topics are not deserialized (their type may be unknown, e.g. service events): their log time is the stamp.
    """
    connections = [c for c in reader.connections if c.topic in wanted]
    raw: dict[str, list] = {topic: [] for topic in {c.topic for c in connections}}
    types = {c.topic: normalize_type(c.msgtype) for c in connections}
    for connection, log_ns, rawdata in reader.messages(connections=connections):
        if connection.topic in marker_topics:
            raw[connection.topic].append((log_ns * 1e-9, log_ns, None))
            continue
        msg = reader.deserialize(rawdata, connection.msgtype)
        header = getattr(msg, "header", None)
        stamp = codecs.header_stamp({"header": codecs.message_to_dict(header)}) if header is not None else None
        t = stamp if stamp is not None else log_ns * 1e-9
        payload = None if connection.topic in image_topics else codecs.message_to_dict(msg)
        raw[connection.topic].append((t, log_ns, payload))
    streams = {}
    for topic, items in raw.items():
        items.sort(key=lambda item: (item[0], item[1]))  # stamps may arrive out of log order
        streams[topic] = Stream(
            topic=topic,
            msg_type=types[topic],
            stamps=np.array([item[0] for item in items], dtype=np.float64),
            log_ns=np.array([item[1] for item in items], dtype=np.int64),
            payloads=None if topic in image_topics else [item[2] for item in items],
        )
    return streams


def _decode_frames(reader, topic: str, msg_type: str, log_times: set[int]) -> dict[int, np.ndarray]:
    """Second pass over one image topic, decoding only the messages whose log time is in `log_times`."""
    if not log_times:
        return {}
    connections = [c for c in reader.connections if c.topic == topic]
    frames = {}
    for connection, log_ns, rawdata in reader.messages(
        connections=connections, start=min(log_times), stop=max(log_times) + 1
    ):
        if log_ns in log_times and log_ns not in frames:
            msg = codecs.message_to_dict(reader.deserialize(rawdata, connection.msgtype))
            frames[log_ns] = codecs.decode_camera(msg, msg_type)
    return frames


# --- episodes ---------------------------------------------------------------------------------------------------------
def _episode_ranges(streams: dict[str, Stream], split_topic: str | None, min_gap_s: float) -> list[tuple[float, float]]:
    everything = [s.stamps for s in streams.values() if len(s.stamps)]
    start = min(float(s[0]) for s in everything)
    end = max(float(s[-1]) for s in everything)
    if not split_topic or split_topic not in streams:
        return [(start, end)]
    markers: list[float] = []
    for t in streams[split_topic].stamps:
        if not markers or t - markers[-1] >= min_gap_s:
            markers.append(float(t))
    bounds = [start] + [m for m in markers if start < m < end] + [end]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _gap_spans(ticks: np.ndarray, ages: np.ndarray, limit_s: float, t0: float) -> list[list[float]]:
    flagged = ages > limit_s
    spans, begin = [], None
    for i, bad in enumerate(flagged):
        if bad and begin is None:
            begin = i
        if begin is not None and (not bad or i == len(flagged) - 1):
            last = i if bad else i - 1
            spans.append([round(float(ticks[begin] - t0), 4), round(float(ticks[last] - t0), 4)])
            begin = None
    return spans


def _state_at(config: RobotConfig, streams: dict[str, Stream], idx: dict[str, np.ndarray], k: int) -> np.ndarray:
    parts = [codecs.decode_state(streams[s.topic].payloads[idx[s.topic][k]], s) for s in config.state]
    return np.concatenate(parts)


def _next_state_actions(config: RobotConfig, streams, idx, n_ticks: int) -> np.ndarray:
    act = config.action
    if act.kind != "position" or not act.joints:
        raise ValueError(
            f"no command topic {act.topic} recorded, and a {act.kind} {act.type} action cannot be read from the "
            "next state (that needs kind=position and action.joints)"
        )
    source = next((s for s in config.state if s.type == "sensor_msgs/JointState"), None)
    if source is None:
        raise ValueError("no command topic recorded and no JointState source to take the next state from")
    actions = []
    for k in range(1, n_ticks):
        positions = codecs.joint_positions(streams[source.topic].payloads[idx[source.topic][k]], act.joints)
        if positions is None:
            raise ValueError(f"JointState on {source.topic} lacks some of action.joints {act.joints}")
        actions.append(positions)
    return np.asarray(actions)


def convert_bag(
    path: str | os.PathLike, config: RobotConfig, fps: float, language: str | None = None
) -> Iterator[tuple[EpisodeReport, object | None]]:
    """Yield (report, Episode or None when skipped) for every episode in one bag."""
    from voltron.datasets.demos import Episode

    path = Path(path)
    period = 1.0 / fps
    cameras = config.cameras
    wanted = {c.topic: c.type for c in cameras.values()}
    wanted.update({s.topic: s.type for s in config.state})
    wanted[config.action.topic] = config.action.type
    if config.instruction.topic:
        wanted[config.instruction.topic] = "std_msgs/String"
    if config.bag.split_topic:
        wanted[config.bag.split_topic] = "*"
    image_topics = {c.topic for c in cameras.values()}
    required = list(dict.fromkeys([c.topic for c in cameras.values()] + [s.topic for s in config.state]))

    with _open_reader(path) as reader:
        present = sorted(reader.topics)
        missing = [topic for topic in required if topic not in present]
        if missing:
            yield EpisodeReport(str(path), 0, skipped=f"missing topic(s) {missing}; the bag has {present}"), None
            return
        markers = {config.bag.split_topic} if config.bag.split_topic else set()
        streams = _read_streams(reader, wanted, image_topics, markers)
        empty = [topic for topic in required if topic not in streams or not len(streams[topic].stamps)]
        if empty:
            yield EpisodeReport(str(path), 0, skipped=f"no messages on {empty}"), None
            return
        command = streams.get(config.action.topic)
        has_commands = command is not None and len(command.stamps) > 0

        for number, (begin, end) in enumerate(
            _episode_ranges(streams, config.bag.split_topic, config.bag.split_min_gap_s)
        ):
            report = EpisodeReport(str(path), number)
            first_ok = max(float(streams[t].stamps[0]) for t in required)
            if has_commands:
                first_ok = max(first_ok, float(command.stamps[0]) - period)  # tick t needs a command by tick t+1
            t0 = max(begin, first_ok)
            report.head_trimmed_s = round(max(0.0, t0 - begin), 4)
            n_ticks = int(np.floor((end - t0) / period + 1e-9)) + 1 if end >= t0 else 0
            if n_ticks - 1 < max(1, config.bag.min_steps):
                report.skipped = (
                    f"{max(0, n_ticks - 1)} steps between {begin:.3f} and {end:.3f} s, fewer than min_steps"
                )
                yield report, None
                continue
            ticks = t0 + period * np.arange(n_ticks)
            idx = {topic: streams[topic].latest(ticks) for topic in required}
            for topic in required:
                ages = ticks - streams[topic].stamps[idx[topic]]
                spans = _gap_spans(ticks, ages, config.bag.gap_periods * period, t0)
                if spans:
                    report.gaps[_stream_name(config, topic)] = spans
            try:
                if has_commands:
                    cmd_idx = command.latest(ticks[1:])
                    report.action_source = config.action.topic
                    actions = np.asarray([codecs.decode_action(command.payloads[i], config.action) for i in cmd_idx])
                    ages = ticks[1:] - command.stamps[cmd_idx]
                    spans = _gap_spans(ticks[1:], ages, config.bag.gap_periods * period, t0)
                    if spans:
                        report.gaps[f"command:{config.action.topic}"] = spans
                else:
                    report.action_source = "next state"
                    actions = _next_state_actions(config, streams, idx, n_ticks)
                if actions.shape[1] != config.action.dim:
                    raise ValueError(
                        f"actions have {actions.shape[1]} components, action.low/high has {config.action.dim}"
                    )
                proprio = np.stack([_state_at(config, streams, idx, k) for k in range(n_ticks - 1)])
                images = {}
                for name, camera in cameras.items():
                    stream = streams[camera.topic]
                    wanted_log = stream.log_ns[idx[camera.topic][: n_ticks - 1]]
                    frames = _decode_frames(reader, camera.topic, camera.type, set(int(t) for t in wanted_log))
                    shapes = {f.shape for f in frames.values()}
                    if len(shapes) != 1:
                        raise ValueError(
                            f"camera {name} ({camera.topic}) changes resolution within the episode: {shapes}"
                        )
                    images[name] = np.stack([frames[int(t)] for t in wanted_log])
            except (ValueError, KeyError) as err:
                report.skipped = str(err).strip("'\"")
                yield report, None
                continue

            report.steps = n_ticks - 1
            report.start = float(t0)
            report.language = language if language is not None else _language(config, streams, begin, end)
            attrs = {
                "source_bag": str(path),
                "bag_episode": number,
                "fps": float(fps),
                "start_stamp": float(t0),
                "action_source": report.action_source,
                "gap_ticks": report.gap_ticks(fps),
                "gaps": json.dumps(report.gaps),
            }
            episode = Episode(
                images=images,
                proprio=proprio.astype(np.float32),
                actions=actions.astype(np.float32),
                language=report.language,
                attrs=attrs,
            )
            yield report, episode


def _stream_name(config: RobotConfig, topic: str) -> str:
    for name, camera in config.cameras.items():
        if camera.topic == topic:
            return f"camera:{name}"
    return f"state:{topic}"


def _language(config: RobotConfig, streams: dict[str, Stream], begin: float, end: float) -> str:
    """The instruction in force at the episode's last tick, else the config default."""
    topic = config.instruction.topic
    stream = streams.get(topic) if topic else None
    if stream is not None and len(stream.stamps):
        i = bisect_right(stream.stamps.tolist(), end) - 1
        if i >= 0:
            return codecs.decode_string(stream.payloads[i])
    return config.instruction.default


def bag2demos(
    bags: Sequence[str | os.PathLike],
    config: RobotConfig,
    *,
    fps: float,
    out: str | os.PathLike,
    language: str | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> ConversionReport:
    """Convert `bags` into one demo HDF5 at `out`; returns the report (also for skipped episodes and gaps).

    Episodes are converted and written one at a time. Nothing is written when no episode survives.
    """
    from voltron.datasets.demos import write_demos

    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    report = ConversionReport(out=str(out), fps=float(fps))

    def episodes():
        for bag in bags:
            for episode_report, episode in convert_bag(bag, config, fps, language):
                report.episodes.append(episode_report)
                if episode is not None:
                    yield episode

    stream = episodes()
    first = next(stream, None)
    if first is None:  # nothing survived: leave `out` (and any file already there) untouched
        return report

    env_args = {
        "env_name": config.name,
        "type": "ros",
        "env_kwargs": {
            "fps": float(fps),
            "cameras": {name: {"topic": c.topic, "type": c.type} for name, c in config.cameras.items()},
            "state": [{"topic": s.topic, "type": s.type, "joints": s.joints, "fields": s.fields} for s in config.state],
            "action": {
                "topic": config.action.topic,
                "type": config.action.type,
                "kind": config.action.kind,
                "joints": config.action.joints,
                "low": config.action.low,
                "high": config.action.high,
            },
        },
    }
    write_demos(Path(out), itertools.chain([first], stream), env_args, valid_fraction=valid_fraction, seed=seed)
    return report
