"""`uav upscale --cluster`: scene-cut segments rendered by Ray actors on 127.0.0.1, with the real
vspipe, ffmpeg and tiny model. The frames equal a one-machine render's (framemd5 of both); a
worker killed with SIGKILL is replaced and its segment rendered again; a killed driver's
finished segments are not rendered again; a node that cannot see the work folder stops the
job in one line before anything is rendered."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from clips import AIGC, ANIMATION, MOVIE, framemd5, splice
from conftest import MODEL_DIR

from vs_uav.app.cluster import ClusterOptions, count_frames, work_folder

# Ray on this machine binds to the loopback interface only and reports nothing (read when Ray is imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

UAV = str(Path(sys.executable).parent / "uav")
WORKERS = 2
# A CPU worker's torch threads: the machine's cores shared by the local workers. Float sums depend
# on the thread count, so the one-machine reference renders with as many.
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
RENDER = ["--model", str(MODEL_DIR), "--steps", "1", "--flow", "dis", "--codec", "ffv1"]
CLUSTER = ["--cluster", "local", "--workers", str(WORKERS), "--segment-seconds", "0.2"]  # 5 frames: one scene each


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """30 frames of 48x32 in 4 shots (cuts at 9, 17, 24), the animation's audio."""
    path = tmp_path_factory.mktemp("cluster") / "clip.mkv"
    assert splice(path, [(ANIMATION, 0, 9), (AIGC, 5, 8), (ANIMATION, 40, 7), (MOVIE, 2, 6)], (48, 32)) == [9, 17, 24]
    return path


@pytest.fixture
def ray_env():
    """The environment of a cluster render: Ray's files in a short folder of this test's own, so
    that whatever a killed driver leaves running is found (by that folder) and ended by its pid."""
    folder = tempfile.mkdtemp(prefix="uavray", dir="/tmp")  # sockets live there: the path must stay short
    yield {**os.environ, "RAY_TMPDIR": folder}
    for pid in _processes_mentioning(folder):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(folder, ignore_errors=True)


def _processes_mentioning(text: str) -> list[int]:
    """Processes whose command line or environment holds ``text`` (Ray renames its processes,
    e.g. ray::DashboardAgent, but they keep the RAY_TMPDIR they were started with)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if any(text.encode() in (entry / name).read_bytes() for name in ("cmdline", "environ")):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def upscale(src: Path, out: Path, *extra: str, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([UAV, "-v", "upscale", str(src), "-o", str(out), *RENDER, *extra], capture_output=True,
                          text=True, env=env, timeout=timeout)


def streams(path: Path) -> dict:
    run = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,start_time",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True)
    return {s["codec_type"]: s for s in json.loads(run.stdout)["streams"]}


@pytest.fixture(scope="module")
def reference(clip, tmp_path_factory) -> list[str]:
    """The one-machine render's frames (framemd5), with the workers' thread count."""
    out = tmp_path_factory.mktemp("reference") / "one.mkv"
    r = upscale(clip, out, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    assert r.returncode == 0, r.stderr[-3000:]
    return framemd5(out)


class Follow:
    """A `uav -v upscale --cluster` run whose stderr is read while it runs."""

    def __init__(self, args: list[str], env, new_group: bool = False):
        # new_group: a process group of its own, as a terminal's foreground job (Ctrl+C reaches all of it)
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                                     start_new_session=new_group)
        self.text = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 180, after: int = 0) -> re.Match:
        """The first match of ``pattern`` in stderr from offset ``after`` on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.compile(pattern).search(self.text, after)
            if m:
                return m
            if self.proc.poll() is not None:
                self._reader.join(5)
                m = re.compile(pattern).search(self.text, after)
                if m:
                    return m
                raise AssertionError(f"ended (rc {self.proc.returncode}) without {pattern!r}:\n{self.text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text[-3000:]}")

    def finish(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc


# -- options (no Ray started) -------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers needs --cluster; accepted: --cluster local or HOST:PORT"),
    (["--keep-work"], "--keep-work needs --cluster; accepted: --cluster local or HOST:PORT"),
    (["--cluster", "nowhere"], "--cluster 'nowhere': accepted: 'local', HOST:PORT (a Ray cluster's address, "
                               "e.g. 10.0.0.5:6379) or ray://HOST:PORT"),
    (["--cluster", "local", "--workers", "0"], "--workers 0: accepted: an integer >= 1"),
    (["--cluster", "local", "--workers", "two"], "--workers 'two': accepted: an integer >= 1"),
    (["--cluster", "local", "--segment-seconds", "0"], "--segment-seconds 0: accepted: a number of seconds > 0"),
    (["--cluster", "local", "--split-long", "-1"], "--split-long -1: accepted: a number of seconds >= 0 (0: never)"),
    (["--cluster", "local", "--split-long", "1e999"],
     "--split-long inf: accepted: a number of seconds >= 0 (0: never)"),
])
def test_cluster_options_are_refused_in_one_line(clip, tmp_path, args, message):
    r = subprocess.run([UAV, "upscale", str(clip), "-o", str(tmp_path / "o.mkv"), *args], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == f"uav upscale: {message}", r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a work folder


def test_a_variable_frame_rate_is_refused_before_ray_starts(tmp_path):
    src = tmp_path / "vfr.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=48x32:r=25:d=1", "-vf",
                    "setpts='N/25/TB+if(gt(N,12),0.3/TB,0)'", "-fps_mode", "passthrough", "-c:v", "ffv1", str(src)],
                   check=True, capture_output=True)
    r = subprocess.run([UAV, "upscale", str(src), "-o", str(tmp_path / "out" / "o.mkv"), *RENDER, *CLUSTER],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"uav upscale: --cluster: input {src} has a variable frame rate; accepted: a constant-frame-rate source "
        "(render this one without --cluster)"), r.stderr
    assert "workers starting" not in r.stderr and list((tmp_path / "out").iterdir()) == []  # refused before Ray


def _ntsc_mkv(path: Path, *vf: str, frames: int = 24) -> Path:
    """24000/1001 fps H.264 and AAC in Matroska, as ffmpeg writes it: times in whole milliseconds
    (42/41 ms steps), the video starting 23 ms in (after the AAC priming). From frame 12 on, a
    time differs from the first one's plus N / fps rounded."""
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=48x32:r=24000/1001", "-f", "lavfi",
                    "-i", "sine", *vf, "-frames:v", str(frames), "-t", f"{frames * 1001 / 24000:.3f}", "-c:v",
                    "libx264", "-c:a", "aac", str(path)], check=True, capture_output=True)
    return path


def _cluster_timing(src: Path):
    """What the cluster's timing check says of ``src`` (the start delay, or its ClusterError)."""
    from vs_uav.app.cluster import ClusterError, ClusterJob, start_delay
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.media.output import output_spec
    from vs_uav.media.probe import probe
    from vs_uav.media.script import reading_script
    from vs_uav.settings import UpscaleSettings

    media = probe(src, reading_script(src, ()))
    encoder = EncoderSettings(codec="ffv1")
    job = ClusterJob(src, src, src, src.with_name("o.mkv"), UpscaleSettings(), encoder, output_spec(media, encoder))
    try:
        return media, start_delay(job)
    except ClusterError as e:
        return media, str(e)


def test_a_constant_rate_mkv_with_millisecond_timestamps_is_accepted(tmp_path):
    from fractions import Fraction

    media, delay = _cluster_timing(_ntsc_mkv(tmp_path / "ntsc.mkv"))
    assert media.fps == Fraction(24000, 1001) and media.time_base == Fraction(1, 1000)
    assert {b - a for a, b in zip(media.times, media.times[1:])} == {41, 42}  # as stored, not N / fps
    assert delay == Fraction(23, 1000)  # the first frame's time: the join offsets the segments by it
    # A real variable rate at the same time base is still refused: one frame 5 ms late.
    vfr = _ntsc_mkv(tmp_path / "vfr.mkv", "-vf", "setpts='N*1001/24000/TB+if(eq(N,6),0.005/TB,0)'",
                    "-fps_mode", "passthrough")
    assert _cluster_timing(vfr)[1] == (f"--cluster: input {vfr} has a variable frame rate; accepted: a "
                                       "constant-frame-rate source (render this one without --cluster)")


def test_a_segment_of_the_filter_gives_the_whole_renders_frames_from_a_cut():
    """What a worker renders: ``upscale(_segment=...)`` (or inside ``segment()``, as the generated
    script is evaluated) from a scene cut equals the whole clip's render there, in YUV as encoded."""
    import numpy as np
    import vapoursynth as vs

    from vs_uav.vsfilter import upscale as uav_filter

    core = vs.core
    kw = dict(model=str(MODEL_DIR), steps=2, guidance_scale=4.0, chunk_size=8, propagation_steps=[1], flow="dis")
    rng = np.random.default_rng(0)
    base = rng.random((3, 16 + 20, 24 + 20), dtype=np.float32)
    blank = core.std.BlankClip(width=24, height=16, format=vs.RGBS, length=20, fpsnum=25, fpsden=1)

    def paint(n, f):
        out = f.copy()
        for q in range(3):
            np.copyto(np.asarray(out[q]), base[q, n:n + 16, n:n + 24])
        return out

    clip = core.std.ModifyFrame(blank, blank, paint)
    clip = core.resize.Bicubic(clip[:11] + core.std.SetFrameProps(clip[11], _SceneChangePrev=1) + clip[12:],
                               format=vs.YUV420P8, matrix_s="709")

    def frames(node, numbers):
        return [np.concatenate([np.asarray(node.get_frame(n)[q]).ravel() for q in range(3)]) for n in numbers]

    whole = frames(uav_filter.upscale(clip, **kw), range(20))
    tail_node = uav_filter.upscale(clip, _segment=(11, 20), **kw)
    tail = frames(tail_node, range(11, 20))
    assert all(np.array_equal(a, b) for a, b in zip(tail, whole[11:]))
    with pytest.raises(vs.Error, match=r"frame 10 failed: IndexError: frame 10 is outside frames 11\.\.20"):
        tail_node.get_frame(10)  # restricted: nothing before the segment is computed
    with uav_filter.segment(0, 11):
        head = uav_filter.upscale(clip, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(frames(head, range(11)), whole[:11]))
    with pytest.raises(vs.Error, match=r"uav\.Upscale: frame 11 failed: IndexError: frame 11 is outside frames 0\.\.11"):
        head.get_frame(11)
    with pytest.raises(vs.Error, match=r"^uav\.Upscale: frames 12\.\.12; accepted: 0 <= start < stop <= 20$"):
        uav_filter.upscale(clip, _segment=(12, 12), **kw)


def test_options_and_work_folder():
    assert ClusterOptions().address == "local" and ClusterOptions().loopback
    assert ClusterOptions("127.0.0.1:6379").loopback and not ClusterOptions("10.0.0.5:6379").loopback
    assert ClusterOptions("ray://head:10001").address == "ray://head:10001"
    assert work_folder(Path("/data/out.mkv")) == Path("/data/.out.mkv.uav-work")


def test_the_driver_names_its_own_model_folder_and_cache_for_the_workers(monkeypatch, tmp_path):
    from vs_uav.app.cluster import driver_settings
    from vs_uav.settings import UpscaleSettings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UAV_MODEL_DIR", "models/uav")  # relative: to this folder, not a worker's
    given = driver_settings(UpscaleSettings(cache_dir="cache"))
    assert (given.model, given.cache_dir) == (str(tmp_path / "models/uav"), str(tmp_path / "cache"))
    assert driver_settings(UpscaleSettings(model="~/m")).model == os.path.expanduser("~/m")


def test_doctor_says_whether_ray_is_installed(monkeypatch):
    from vs_uav.app.doctor import FIXES, check_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check = check_cluster()
    cpus = len(os.sched_getaffinity(0))
    assert check.status == "ok" and re.fullmatch(
        rf"Ray 2\.\d+\.\d+; a bare --cluster starts a local Ray instance on 127\.0\.0\.1 with {cpus} CPUs? and "
        r"(0 GPUs \(one CPU worker, --workers N for more\)|[1-9]\d* GPUs? \(one worker per GPU\))", check.detail), \
        check.detail
    blocked = ("import sys\nclass Blocked:\n    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'ray':\n            raise ModuleNotFoundError(name)\n"
               "sys.meta_path.insert(0, Blocked())\nfrom vs_uav.app.doctor import check_cluster\n"
               "print(check_cluster().line())\n")
    r = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == ("[warn] cluster: Ray is not installed: uav upscale --cluster is unavailable -> "
                                f"{FIXES['cluster']}"), r.stderr


def test_doctor_says_whether_ray_address_answers(monkeypatch):
    """A real listening socket on 127.0.0.1 answers; the same port closed does not."""
    import socket as sockets

    from vs_uav.app.doctor import check_cluster

    server = sockets.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    try:
        check = check_cluster()
    finally:
        server.close()
    assert (check.status, check.detail.split("; ", 1)[1]) == (
        "ok", f"a bare --cluster joins RAY_ADDRESS={address}, which answers")
    check = check_cluster()
    assert (check.status, check.detail.split("; ", 1)[1]) == (
        "warn", f"a bare --cluster joins RAY_ADDRESS={address}, which does not answer (Connection refused)")
    assert "unset it for a local instance" in check.line()
    monkeypatch.setenv("RAY_ADDRESS", "nowhere")
    assert check_cluster().detail.split("; ", 1)[1] == (
        "RAY_ADDRESS='nowhere': accepted: 'local', HOST:PORT (a Ray cluster's address, e.g. 10.0.0.5:6379) or "
        "ray://HOST:PORT")


def test_a_bare_cluster_option_means_ray_address_else_local(monkeypatch):
    from vs_uav.app.cli import _cluster_options, build_parser

    def options(*extra: str):
        return _cluster_options(build_parser().parse_args(["upscale", "in.mkv", *extra]))

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert options("--cluster").address == "local" and options("--cluster", "--workers", "2").workers == 2
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert options("--cluster").address == "127.0.0.1:6379" and options("--cluster", "local").address == "local"
    assert options() is None


# -- real Ray ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_cluster_render_equals_the_one_machine_render(clip, reference, tmp_path, ray_env):
    """The command the preset editor shows for "Render on: a local Ray instance" (the reference
    is the one-machine render of the same settings)."""
    from vs_uav.app.job import upscale_command
    from vs_uav.app.presets import Preset
    from vs_uav.media.encoder import EncoderSettings
    from vs_uav.settings import UpscaleSettings

    out = tmp_path / "cluster.mkv"
    preset = Preset("tiny", UpscaleSettings(model=str(MODEL_DIR), steps=1, flow="dis"), EncoderSettings(codec="ffv1"))
    shown = shlex.split(upscale_command(preset, clip, out, ClusterOptions(workers=WORKERS, segment_seconds=0.2)))
    assert shown[:2] == ["uav", "upscale"] and shown[2:] == [str(clip), "-o", str(out), *RENDER, *CLUSTER]
    r = subprocess.run([UAV, "-v", *shown[1:]], capture_output=True, text=True, env=ray_env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cluster: 30 frames, 3 scene cuts, 4 segments" in r.stderr
    # The workers start (and load the model) before the driver's scene-cut pass.
    assert r.stderr.index("cluster: 2 workers starting") < r.stderr.index("cluster: 30 frames, 3 scene cuts")
    frames = framemd5(out)
    assert len(frames) == len(reference) == 30
    assert frames == reference  # every decoded frame identical
    s = streams(out)
    assert s["video"]["codec_name"] == "ffv1" and s["audio"]["codec_name"] == "aac"  # the source's audio
    assert s["video"]["start_time"] == streams(clip)["video"]["start_time"]  # the source's first frame time
    summary = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"uav upscale: wrote {re.escape(str(out))}: 30 frames in 4 segments \(0 already done\) "
                        rf"on {WORKERS} workers, 1 node, in \d+ s \(\d+\.\d\d fps\)", summary), summary
    # -v: where each worker runs (127.0.0.1: a local instance stays on the loopback interface), what
    # each segment took and its worker's peak memory.
    assert re.search(r"cluster: worker 1: pid \d+ on 127\.0\.0\.1 ", r.stderr)
    assert len(re.findall(r"frames \d+-\d+ done by worker \d \(pid \d+ on .+\) in [\d.]+ s, peak memory \d+ MiB",
                          r.stderr)) == 4
    # One progress line: frames, rate, ETA, busy workers, redrawn in place (text mode reads its \r as \n).
    assert re.search(r"^uav upscale: \d+/30 frames, [-\d.]+ fps, ETA [-:\d]+, \d/2 workers busy, \d/4 segments",
                     r.stderr, re.M)
    last = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if "workers busy" in ln][-1]
    assert "30/30 frames" in last and "0/2 workers busy, 4/4 segments" in last, last  # the final state
    assert not work_folder(out).exists()  # removed once the output was verified
    deadline = time.monotonic() + 20  # the local Ray instance is stopped at the end
    while _processes_mentioning(ray_env["RAY_TMPDIR"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(ray_env["RAY_TMPDIR"]) == []


@pytest.mark.slow
def test_a_queue_on_the_cluster_renders_every_files_segments_in_one_pool(clip, reference, tmp_path, ray_env):
    """Two files, one set of workers (started once) and one pool for their 8 segments; each
    output the one-machine render's, recorded as finished, so that the same command skips both."""
    other = tmp_path / "in" / "copy.mkv"
    other.parent.mkdir()
    shutil.copy(clip, other)
    out = tmp_path / "out"
    command = [UAV, "-v", "upscale", str(clip), str(other), "-o", str(out), *RENDER, *CLUSTER]
    r = subprocess.run(command, capture_output=True, text=True, env=ray_env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("cluster: 2 workers starting") == 1, r.stderr[-3000:]
    assert r.stderr.count("cluster: 30 frames, 3 scene cuts, 4 segments") == 2
    assert len(re.findall(r"frames \d+-\d+ done by worker", r.stderr)) == 8
    assert framemd5(out / "clip.uav.mkv") == reference and framemd5(out / "copy.uav.mkv") == reference
    assert r.stderr.strip().splitlines()[-1].startswith("uav upscale: 2 files: 2 done, 0 failed, 0 skipped")
    again = subprocess.run(command, capture_output=True, text=True, env=ray_env, timeout=300)
    assert again.returncode == 0 and "0 done, 0 failed, 2 skipped" in again.stderr, again.stderr[-2000:]


@pytest.mark.slow
def test_an_excerpt_renders_on_the_cluster_as_on_one_machine(clip, tmp_path, ray_env):
    """--frames 12-27 (a conform's piece): its cuts (17, 24) found among its frames only and its
    segments numbered from its first frame; the frames, the audio's codec and the timecode are
    the one-machine excerpt's."""
    one, out = tmp_path / "one.mkv", tmp_path / "cluster.mkv"
    r = upscale(clip, one, "--frames", "12-27", env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    assert r.returncode == 0, r.stderr[-3000:]
    r = upscale(clip, out, "--frames", "12-27", *CLUSTER, env=ray_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cluster: 16 frames, 2 scene cuts, 3 segments" in r.stderr
    assert framemd5(out) == framemd5(one) and len(framemd5(one)) == 16
    assert streams(out)["audio"]["codec_name"] == streams(one)["audio"]["codec_name"] == "flac"
    timecode = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format_tags=timecode", "-of", "csv=p=0",
                               str(out)], capture_output=True, text=True).stdout.strip()
    assert timecode.endswith(":12") and timecode.startswith("00:00:0"), timecode


@pytest.mark.slow
def test_a_worker_killed_mid_render_is_replaced(clip, reference, tmp_path, ray_env):
    out = tmp_path / "cluster.mkv"
    run = Follow([UAV, "-v", "upscale", str(clip), "-o", str(out), *RENDER, *CLUSTER], ray_env)
    m = run.wait_for(r"worker (\d+) \(pid (\d+)\) rendering frames (\d+)-(\d+)")
    pid, first, last = int(m[2]), m[3], m[4]
    assert b"SegmentWorker" in Path(f"/proc/{pid}/cmdline").read_bytes()  # Ray names its actor processes
    os.kill(pid, signal.SIGKILL)
    assert run.finish() == 0, run.text[-3000:]
    done = re.search(rf"frames {first}-{last} done by worker \d+ \(pid (\d+) ", run.text)
    assert done and int(done[1]) != pid, run.text[-3000:]  # rendered again, by the restarted worker
    # Said at warning level, in one line: which worker and node, and the segment rendered again.
    said = re.findall(r"^.*died; Ray restarted.*$", run.text, re.M)
    assert len(said) == 1 and re.fullmatch(
        rf"WARNING vs_uav\.app\.cluster\.pool: cluster: worker {m[1]} \(pid {pid} on 127\.0\.0\.1, Ray node "
        rf"[0-9a-f]{{8}}\) died; "
        rf"Ray restarted it as pid {done[1]}, which renders frames {first}-{last} again", said[0]), said
    assert framemd5(out) == reference


@pytest.mark.slow
def test_a_short_clip_renders_on_the_workers_it_needs_with_all_their_threads(tmp_path, ray_env):
    """One segment for two workers: one renders it with the cores of both, and the summary says
    1 worker. The source is a 23.976 fps MKV (millisecond timestamps, video starting 23 ms in):
    the joined output keeps every frame's time, and the audio, subtitles and title as the
    one-machine pipe does (one set of source options for both)."""
    plain = _ntsc_mkv(tmp_path / "plain.mkv", frames=14)
    (tmp_path / "a.srt").write_text("1\n00:00:00,100 --> 00:00:00,300\nHello\n", encoding="utf-8")
    src = tmp_path / "ntsc.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(plain), "-i", str(tmp_path / "a.srt"), "-map", "0", "-map", "1",
                    "-c", "copy", "-c:s", "srt", "-metadata", "title=Le film", str(src)], check=True)
    out = tmp_path / "out.mkv"
    r = upscale(src, out, "--cluster", "local", "--workers", "2", "--scene-cuts", "none", env=ray_env)
    assert r.returncode == 0, r.stderr[-3000:]
    threads = max(len(os.sched_getaffinity(0)), 2)  # the local instance's CPUs, all for the one worker
    assert f"cluster: 1 segment to render for 2 workers: 1 worker, {threads} threads each" in r.stderr, \
        r.stderr[-3000:]
    assert re.search(rf"frames 0-13 done by worker 1 \(pid \d+ on .+, {threads} threads\)", r.stderr)
    summary = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"uav upscale: wrote {re.escape(str(out))}: 14 frames in 1 segment \(0 already done\) on 1 "
                        r"worker, 1 node, in \d+ s \(\d+\.\d\d fps\)", summary), summary

    def times(path: Path) -> list[float]:
        run = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time",
                              "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True)
        return sorted(float(t) for t in run.stdout.split())

    got = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name:"
                                     "format_tags=title", "-of", "json", str(out)], capture_output=True, text=True,
                                    check=True).stdout)
    assert [(t["codec_type"], t["codec_name"]) for t in got["streams"]] == [("video", "ffv1"), ("audio", "aac"),
                                                                          ("subtitle", "subrip")], got
    assert got["format"]["tags"]["title"] == "Le film"
    ours, theirs = times(out), times(src)
    assert len(ours) == len(theirs) == 14 and theirs[0] == 0.023
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 0.001 + 1e-9, (ours, theirs)


@pytest.mark.slow
def test_a_killed_driver_resumes_without_rendering_finished_segments_again(clip, reference, tmp_path, ray_env):
    out = tmp_path / "cluster.mkv"
    args = [UAV, "-v", "upscale", str(clip), "-o", str(out), *RENDER, *CLUSTER, "--keep-work"]
    run = Follow(args, ray_env)
    run.wait_for(r"frames \d+-\d+ done by worker")
    run.proc.kill()  # SIGKILL: no clean-up of any kind
    run.finish()
    # Its workers end with its Ray instance (Ray's reaper); one may still finish the segment it is on.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
            b"SegmentWorker" in _read(f"/proc/{pid}/cmdline") for pid in _processes_mentioning(ray_env["RAY_TMPDIR"])):
        time.sleep(0.2)
    assert not any(b"SegmentWorker" in _read(f"/proc/{pid}/cmdline")  # none outlives the SIGKILLed driver
                   for pid in _processes_mentioning(ray_env["RAY_TMPDIR"]))
    work = work_folder(out)
    finished = {p: p.stat().st_mtime_ns for p in work.glob("*/seg*.mkv") if ".partial" not in p.name}
    assert finished and not out.exists()
    for p in finished:  # a segment file has its name only when complete: seg<first>-<end>.mkv
        first, end = map(int, re.fullmatch(r"seg(\d+)-(\d+)\.mkv", p.name).groups())
        assert count_frames(p) == end - first
    time.sleep(1.1)  # a file written again would get a later time
    second = subprocess.run(args, capture_output=True, text=True, env=ray_env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"cluster: {len(finished)} of 4 segments already done" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not rendered again
    assert f"({len(finished)} already done)" in second.stderr.strip().splitlines()[-1]
    assert framemd5(out) == reference
    assert work.is_dir()  # --keep-work


@pytest.mark.slow
def test_ctrl_c_stops_everything_and_the_same_command_resumes(clip, reference, tmp_path, ray_env):
    """Ctrl+C: SIGINT to the command's whole process group (what a terminal sends), while a segment
    renders after another one finished."""
    out = tmp_path / "cluster.mkv"
    args = [UAV, "-v", "upscale", str(clip), "-o", str(out), *RENDER, *CLUSTER]
    run = Follow(args, ray_env, new_group=True)
    done = run.wait_for(r"frames \d+-\d+ done by worker")
    run.wait_for(r"worker \d+ \(pid \d+\) rendering frames", after=done.end())  # the next segment
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.finish(timeout=60) == 130, run.text[-3000:]
    work = work_folder(out)
    assert run.text.strip().splitlines()[-1] == (
        f"uav upscale: stopped by SIGINT: the workers and Ray ended, no partial {out} or temporary files left; the "
        f"finished segments stay in {work}: run the same command to resume"), run.text[-3000:]
    deadline = time.monotonic() + 20  # nothing of Ray is left: workers, their ffmpeg, raylet, GCS
    while _processes_mentioning(ray_env["RAY_TMPDIR"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_mentioning(ray_env["RAY_TMPDIR"]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [work.name]  # no output, no partial output
    finished = list(work.glob("*/seg*"))  # complete segments only: no partial one, no ffmpeg log
    assert finished and all(re.fullmatch(r"seg\d+-\d+\.mkv", p.name) for p in finished), finished
    again = subprocess.run(args, capture_output=True, text=True, env=ray_env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"cluster: {len(finished)} of 4 segments already done" in again.stderr
    assert framemd5(out) == reference and not work.exists()


def _free_port() -> int:
    import socket as sockets

    with sockets.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path, ray_env):
    """A cluster as the README's recipe starts it: `ray start --head` (on 127.0.0.1 here) with
    Ray's default authentication, i.e. token authentication since the machine has a token (a
    file of its own here, as ~/.ray/auth_token would be), and without the driver's
    UAV_MODEL_DIR or model folder: its workers have the head's environment. Stopped by its pid."""
    token = tmp_path / "auth_token"
    token.write_text(os.urandom(16).hex(), encoding="utf-8")
    port = _free_port()
    env = {k: v for k, v in ray_env.items() if k not in ("UAV_MODEL_DIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_TOKEN_PATH=str(token), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               XDG_DATA_HOME=str(tmp_path / "head-data"))  # the head's default model folder: none
    head = subprocess.Popen([str(Path(UAV).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
                             "--disable-usage-stats", f"--object-store-memory={80 * 2**20}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    said = ""
    try:
        for line in head.stdout:
            said += line
            if "Ray runtime started" in line:
                break
        assert "Token authentication is enabled for this Ray cluster" in said, said  # Ray's default, with a token
        yield f"127.0.0.1:{port}", token
    finally:
        head.terminate()  # --block: it stops the processes it started
        head.wait(60)


def test_an_address_where_nothing_answers_is_refused_in_one_line(clip, tmp_path):
    address = f"127.0.0.1:{_free_port()}"  # closed: Ray's own client would retry for 40 s
    r = subprocess.run([UAV, "upscale", str(clip), "-o", str(tmp_path / "o.mkv"), *RENDER, "--cluster", address],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"uav upscale: --cluster {address}: nothing answers there (Connection refused); accepted: the address of a "
        "running Ray cluster (`ray start --head` prints it)"), r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_joining_a_running_cluster_with_rays_default_token_authentication(clip, reference, tmp_path, ray_env,
                                                                           ray_head):
    """The driver joins with the head's token and nothing else set (no RAY_AUTH_MODE); without it
    the failure is one line saying what to set. The model folder comes from UAV_MODEL_DIR of the
    driver's shell only: the workers get it from the driver."""
    address, token = ray_head
    env = {k: v for k, v in ray_env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    args = [UAV, "-v", "upscale", str(clip), "-o", str(tmp_path / "no.mkv"), "--steps", "1", "--flow", "dis",
            "--codec", "ffv1", "--cluster", address, "--workers", "2", "--segment-seconds", "0.2"]
    started = time.monotonic()
    r = subprocess.run(args, capture_output=True, text=True, timeout=120,
                       env={**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none"), "UAV_MODEL_DIR": str(MODEL_DIR)})
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        f"uav upscale: --cluster {address}: the cluster uses Ray's token authentication and this machine has no "
        "token; accepted: the head's token (`ray get-auth-token` prints it there) in ~/.ray/auth_token here, or in "
        "RAY_AUTH_TOKEN"), r.stderr[-3000:]
    assert "gcs_client" not in r.stderr and "Token authentication" not in r.stderr  # no screen of Ray's warnings
    assert "workers starting" not in r.stderr and not (tmp_path / "no.mkv").exists()  # refused before any worker

    out = tmp_path / "out.mkv"
    args[5] = str(out)
    r = subprocess.run(args, capture_output=True, text=True, timeout=300,
                       env={**env, "RAY_AUTH_TOKEN_PATH": str(token), "UAV_MODEL_DIR": str(MODEL_DIR)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "gcs_client" not in r.stderr and "Token authentication" not in r.stderr

    assert framemd5(out) == reference  # the model of the driver's UAV_MODEL_DIR, 1 thread a worker as there


_NODE = """
import sys
from ray._private.node import Node
from ray._private.parameter import RayParams
# A second Ray node (what ray.cluster_utils.Cluster.add_node starts), in this mount namespace.
# Not `ray start --address`: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it refuses to join a node, and
# with 1 it turns 127.0.0.1 into the machine's address (Ray 2.60): a node on loopback only needs this.
node = Node(RayParams(node_ip_address="127.0.0.1", gcs_address=sys.argv[1], num_cpus=1, num_gpus=0,
                      object_store_memory=80 * 2**20, min_worker_port=0, max_worker_port=0,
                      include_log_monitor=False, node_manager_port=0),
            head=False, shutdown_at_exit=True, spawn_reaper=True)
print(node.node_id, flush=True)
sys.stdin.read()  # until the test closes it
node.kill_all_processes(check_alive=False, allow_graceful=True)
"""


def _can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -m` (root or user namespaces) to give one Ray node "
                                                "a view of the file system without the output folder")
def test_a_node_that_cannot_see_the_work_folder_stops_the_job_in_one_line(clip, tmp_path):
    from ray.cluster_utils import Cluster

    hidden = tmp_path / "out"  # a tmpfs hides it from the second node: as if it were not shared storage
    hidden.mkdir()
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, node_ip_address="127.0.0.1",
                                                                include_dashboard=False,
                                                                object_store_memory=80 * 2**20))
    node = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                             'mount -t tmpfs tmpfs "$1" && exec "$2" -c "$3" "$4"', "sh", str(hidden),
                             sys.executable, _NODE, cluster.address], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        blind = node.stdout.readline().strip()
        assert re.fullmatch(r"[0-9a-f]{56}", blind), blind
        out = hidden / "x.mkv"
        started = time.monotonic()
        # Two workers of one CPU each on two nodes of one CPU: one on each.
        r = upscale(clip, out, "--cluster", cluster.address, "--workers", "2", "--segment-seconds", "0.2")
        seconds = time.monotonic() - started
    finally:
        node.stdin.close()
        node.wait(60)
        cluster.shutdown()
    work = work_folder(out)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"uav upscale: --cluster: node 127.0.0.1 ({os.uname().nodename}, Ray node {blind[:8]}) cannot see the work "
        f"folder {work} (No such file or directory); accepted: a work folder and source every node sees at the same "
        "path (put -o and the input on shared storage); nothing was rendered")
    assert list(hidden.iterdir()) == []  # no output, no segment, no work folder


@pytest.mark.slow
def test_prompt_auto_on_the_cluster_equals_the_one_machine_render(clip, reference, tmp_path, ray_env):
    """--prompt auto: the driver captions the scenes (a tiny Florence-2) into the captions file
    before planning; the workers' segments apply it, and the frames are the one-machine render's."""
    from captioner_models import tiny_florence2

    from vs_uav.media.captions import read_captions

    tiny_florence2(tmp_path / "captioners" / "florence-2", seed=1)
    env = {"UAV_CAPTIONER_DIR": str(tmp_path / "captioners"), "UAV_CAPTION_CACHE": str(tmp_path / "cache")}
    one, out = tmp_path / "one.mkv", tmp_path / "cluster.mkv"
    r = upscale(clip, one, "--prompt", "auto", env={**os.environ, **env, "OMP_NUM_THREADS": str(THREADS)})
    assert r.returncode == 0, r.stderr[-3000:]
    r = upscale(clip, out, "--prompt", "auto", *CLUSTER, env={**ray_env, **env})
    assert r.returncode == 0, r.stderr[-3000:]
    assert [s.frame for s in read_captions(tmp_path / "cluster.captions.tsv")] == [0, 9, 17, 24]
    assert read_captions(tmp_path / "cluster.captions.tsv") == read_captions(tmp_path / "one.captions.tsv")
    assert "4 scenes captioned into" in r.stderr and "(4 from the cache)" in r.stderr
    assert framemd5(out) == framemd5(one) != reference


@pytest.mark.slow
def test_the_join_keeps_every_frames_time_as_a_one_machine_render_writes_it(tmp_path, ray_env):
    """At 24 fps Matroska's millisecond times are rounded: segments timed where they stand in the
    clip are rounded once, as the one-machine render's frames are, so no later frame moves by
    1 ms (frame 34 stays at 1.417 s, not 1.416 s)."""
    src = tmp_path / "film.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=48x32:rate=24", "-frames:v", "40",
                    "-c:v", "ffv1", str(src)], check=True)

    def times(path: Path) -> list[str]:
        run = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time",
                              "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True)
        return sorted(run.stdout.split(), key=float)

    one, cluster = tmp_path / "one.mkv", tmp_path / "cluster.mkv"
    assert upscale(src, one, "--scene-cuts", "none").returncode == 0
    r = upscale(src, cluster, "--scene-cuts", "none", "--cluster", "local", "--workers", "2", "--split-long", "1",
                env=ray_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cluster: 40 frames, 0 scene cuts, 2 segments" in r.stderr, r.stderr[-2000:]  # split at frame 32
    assert len(times(cluster)) == 40 and times(cluster) == times(one)
