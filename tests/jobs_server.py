"""A Hugging Face Jobs stand-in for the test Hub (stdlib only): the ``/api/jobs/...`` routes huggingface_hub 2.4 calls.

* ``GET /api/jobs/hardware``: the flavors (``hardware``, editable) with prices per minute, as list_jobs_hardware reads.
* ``POST /api/jobs/{namespace}``: run_job's spec (``command``, ``environment``, ``secrets``, ``flavor``,
  ``timeoutSeconds``, ``labels``, ``dockerImage``/``spaceId``, ``volumes``: repos mounted read-only, see
  tests/jobs_volumes.py for what is simulated and how). The job's command runs as a local subprocess standing
  in for the image: in its own folder (its ``HOME``, ``TMPDIR`` and ``HF_HOME``), with a bare environment (``PATH``
  to this Python, ``PYTHONPATH`` to this checkout, as an image with phi3space installed would have; for a
  ``pytorch/pytorch:`` image, no phi3space, and pip installing into the job's folder) plus the job's
  environment and its secrets; nothing of the test process's own environment. 401 for an unknown token, 403 outside
  the token's namespaces, 400 for an unknown flavor, and whatever ``refuse`` set for a namespace (402 without a
  payment method, 429 over a quota).
* ``GET /api/jobs/{namespace}/{id}``: the job: SCHEDULING for ``scheduling_s`` (with ``scheduling_message``), then
  RUNNING, then COMPLETED, CANCELED, or ERROR (with ``error_message`` for a non-zero exit, none by default; "Job
  timeout" at the time limit, as documented; what ``kill`` said); durations included; secrets by name only (a list).
* ``GET /api/jobs/{namespace}?label=k=v&stage=S``: the namespace's jobs filtered by labels and stages.
* ``GET /api/jobs/{namespace}/{id}/logs``: a server-sent-events stream as the service sends it: a ``===== Job started``
  line (once running), then ``data: {"data": LINE, "timestamp": ...}`` per line of output (stdout and stderr read apart, line by
  line, as a container runtime does), ``: keep-alive`` comments while quiet, replayed from the first line on every
  request (``tail`` honoured) and ended once the job has ended.
* ``POST /api/jobs/{namespace}/{id}/cancel``: answered at once; ``cancel_s`` later SIGTERM to the command (as to a
  container's first process), SIGKILL to all its processes after ``grace_s``; stage CANCELED once they ended.
* Logs asked for while SCHEDULING: 404 (``scheduling_logs = "404"``) or an empty stream that ends (``"empty"``); with
  ``stream_cut_s = S`` every stream ends S seconds after it began (what it had to replay sent first), before the
  job does (the client asks again); with ``stream_cut_drop`` the connection closes mid-response instead (an error).
* Faults of the log service: ``fail_logs(503)`` answers every log request of the jobs created from then on (or of
  one job, from now on) with that status and a gateway's HTML page (what the service sends then is not documented),
  for ``for_s`` seconds of ``clock()``, or for the whole job (``for_s=None``); ``heal_logs()`` ends it. The job
  itself runs on, inspect_job answers as usual, and a stream already open goes on.
* ``calls(job_id)``: every request about one job (inspect, logs, cancel), as ``(clock(), route, status)``, for
  asserting how often a client asks; ``clock`` is ``time.monotonic`` unless a test gives its own. As huggingface_hub
  2.4 asks: ``inspect_job`` is one GET, never retried; ``fetch_job_logs(follow=True)`` raises at the first HTTP error
  of its stream request (no retry), and after each stream that ends cleanly asks the job's state itself (a GET
  counted as ``inspect``), waiting 2 to 10 s before streaming again while the job runs.
Time limits run ``time_scale`` times faster than written (a 60 s ``timeoutSeconds`` ends a job after 3 s at 0.05),
and durations are reported in the job's own (scaled) seconds.
"""

import json
import os
import secrets as _secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jobs_volumes

REPO = Path(__file__).resolve().parent.parent  # a Space's image has this checkout's phi3space installed
PYTORCH_IMAGE = "pytorch/pytorch:"  # an image with torch and no phi3space: the job installs it


def _flavor(name, pretty, cpu, ram, accelerator, cents_per_hour, storage):
    micro_per_minute = round(cents_per_hour * 10_000 / 60)
    return {"name": name, "prettyName": pretty, "cpu": cpu, "ram": ram, "ephemeralStorage": storage,
            "accelerator": accelerator, "unitCostMicroUSD": micro_per_minute,
            "unitCostUSD": micro_per_minute / 1e6, "unitLabel": "minute"}


def _gpu(model, quantity, vram_gb):
    return {"type": "gpu", "model": model, "quantity": str(quantity), "vram": f"{vram_gb * quantity} GB",
            "manufacturer": "Nvidia"}


# The 26 flavors the Hub documents (docs/hub/jobs-configuration.md, `hf jobs hardware`): name, pretty name, CPU, RAM,
# storage, accelerator and price per hour.
HARDWARE = [
    _flavor("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", None, 1, "50 GB"),
    _flavor("cpu-upgrade", "CPU Upgrade", "8 vCPU", "32 GB", None, 3, "50 GB"),
    _flavor("cpu-performance", "CPU Performance", "32 vCPU", "256 GB", None, 190, "1024 GB"),
    _flavor("cpu-xl", "CPU XL", "16 vCPU", "124 GB", None, 100, "1000 GB"),
    _flavor("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", _gpu("T4", 1, 16), 40, "50 GB"),
    _flavor("t4-medium", "Nvidia T4 - medium", "8 vCPU", "30 GB", _gpu("T4", 1, 16), 60, "100 GB"),
    _flavor("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", _gpu("A10G", 1, 24), 100, "110 GB"),
    _flavor("a10g-large", "Nvidia A10G - large", "12 vCPU", "46 GB", _gpu("A10G", 1, 24), 150, "200 GB"),
    _flavor("a10g-largex2", "2x Nvidia A10G - large", "24 vCPU", "92 GB", _gpu("A10G", 2, 24), 300, "1000 GB"),
    _flavor("a10g-largex4", "4x Nvidia A10G - large", "48 vCPU", "184 GB", _gpu("A10G", 4, 24), 500, "2000 GB"),
    _flavor("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", _gpu("A100", 1, 80), 250, "1000 GB"),
    _flavor("a100x4", "4x Nvidia A100", "48 vCPU", "568 GB", _gpu("A100", 4, 80), 1000, "4000 GB"),
    _flavor("a100x8", "8x Nvidia A100", "96 vCPU", "1136 GB", _gpu("A100", 8, 80), 2000, "8000 GB"),
    _flavor("h200", "Nvidia H200", "23 vCPU", "256 GB", _gpu("H200", 1, 141), 500, "3000 GB"),
    _flavor("h200x2", "Nvidia H200", "46 vCPU", "512 GB", _gpu("H200", 2, 141), 1000, "6000 GB"),
    _flavor("h200x4", "Nvidia H200", "92 vCPU", "1024 GB", _gpu("H200", 4, 141), 2000, "12000 GB"),
    _flavor("h200x8", "Nvidia H200", "184 vCPU", "2048 GB", _gpu("H200", 8, 141), 4000, "24000 GB"),
    _flavor("rtx-pro-6000", "Nvidia RTX PRO 6000", "23 vCPU", "256 GB", _gpu("RTX PRO 6000", 1, 96), 275, "475 GB"),
    _flavor("rtx-pro-6000x2", "Nvidia RTX PRO 6000", "46 vCPU", "512 GB", _gpu("RTX PRO 6000", 2, 96), 550, "950 GB"),
    _flavor("rtx-pro-6000x4", "Nvidia RTX PRO 6000", "92 vCPU", "1024 GB", _gpu("RTX PRO 6000", 4, 96), 1100, "1900 GB"),
    _flavor("rtx-pro-6000x8", "Nvidia RTX PRO 6000", "184 vCPU", "2048 GB", _gpu("RTX PRO 6000", 8, 96), 2200, "3800 GB"),
    _flavor("l4x1", "1x Nvidia L4", "8 vCPU", "30 GB", _gpu("L4", 1, 24), 80, "400 GB"),
    _flavor("l4x4", "4x Nvidia L4", "48 vCPU", "186 GB", _gpu("L4", 4, 24), 380, "3200 GB"),
    _flavor("l40sx1", "1x Nvidia L40S", "8 vCPU", "62 GB", _gpu("L40S", 1, 48), 180, "380 GB"),
    _flavor("l40sx4", "4x Nvidia L40S", "48 vCPU", "382 GB", _gpu("L40S", 4, 48), 830, "3200 GB"),
    _flavor("l40sx8", "8x Nvidia L40S", "192 vCPU", "1534 GB", _gpu("L40S", 8, 48), 2350, "6500 GB"),
]
TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")


def _iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class _Job:
    def __init__(self, job_id, namespace, spec, secrets, folder):
        self.id, self.namespace, self.spec, self.secrets, self.folder = job_id, namespace, spec, secrets, folder
        self.created, self.started, self.finished = time.time(), None, None
        self.stage, self.message = "SCHEDULING", None
        self.lines = []
        self.ended = threading.Condition()
        self.done = False  # the process ended and every line of its output is in ``lines``
        self.proc = None
        self.cancelled = False
        self.killed = False  # ended by the platform (out of memory, time limit): stage ERROR whatever the exit code
        self.kill_message = None
        self.mounts = {}  # mount path -> the job's folder standing in for it (jobs_volumes)
        self.logs_fail = None  # (status, until: a clock() time or None for the whole job) of the log service
        self.calls = []  # (clock(), route, status) of every request about this job


class JobsStandIn:
    """The Jobs routes of a HubServer; tests reach it as ``hub.jobs``."""

    def __init__(self, hub):
        self.hub = hub
        self._lock = threading.RLock()
        self._root = Path(tempfile.mkdtemp(prefix="phi3space-jobs-"))
        self._jobs = {}
        self.reset()

    # ----------------------------------------------------------------- for tests
    def reset(self):
        """End every job and forget them all, with the refusals; hardware, grace and time scale back to defaults."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
            self._refusals = {}
            self.hardware = [dict(f) for f in HARDWARE]
            self.grace_s, self.time_scale = 5.0, 1.0
            self.image_env = {}  # extra environment every job's "image" has
            # The life cycle's timing, as the service has it: SCHEDULING first (its status message; logs asked for
            # meanwhile answer 404, or an empty stream with "empty"), log streams that may end before the job does
            # (after ``stream_cut_s`` seconds each), a cancel that takes ``cancel_s`` before the container is signalled.
            self.scheduling_s, self.scheduling_message, self.scheduling_logs = 0.5, None, "404"
            self.stream_cut_s, self.stream_cut_drop = None, False  # drop: the connection closes mid-response
            self.cancel_s = 1.0
            # The status message of a job whose command exits non-zero ("{code}" is replaced); None: no message.
            self.error_message = None
            self._logs_fault = None  # (status, for_s) given to each job created: see fail_logs
            self.clock = time.monotonic
        for job in jobs:
            with job.ended:
                if job.stage == "SCHEDULING":  # never to start
                    job.stage, job.done = "CANCELED", True
            self._signal(job, signal.SIGKILL)
            if job.proc is not None:
                job.proc.wait()
            shutil.rmtree(job.folder, ignore_errors=True)

    def refuse(self, namespace, status=402, message=None):
        """Refuse to start jobs in ``namespace`` (402: no payment method, 429: quota)."""
        message = message or {402: "Payment required: you need a payment method or pre-paid credits to run Jobs",
                              429: "You have reached the maximum number of concurrent jobs"}.get(status, "Refused")
        with self._lock:
            self._refusals[namespace] = (status, message)

    def fail_logs(self, status=503, for_s=None, job_id=None):
        """The log service fails: each job created from now on (with ``job_id``: that job, from now on) answers its
        log requests with ``status`` for ``for_s`` seconds of ``clock()`` after it was created (``job_id``: from
        now), or for its whole life with None (the route's status, not the job's: inspect_job answers as usual and
        the job runs on). A stream already open goes on."""
        with self._lock:
            if job_id is None:
                self._logs_fault = (status, for_s)
            else:
                self._jobs[job_id].logs_fail = (status, None if for_s is None else self.clock() + for_s)

    def heal_logs(self):
        """The log service answers again, for every job."""
        with self._lock:
            self._logs_fault = None
            for job in self._jobs.values():
                job.logs_fail = None

    def calls(self, job_id):
        """The requests made about ``job_id`` (inspect, logs, cancel), oldest first: ``(clock(), route, status)``."""
        return list(self._jobs[job_id].calls)

    def kill(self, job_id, message=None):
        """The kernel's out-of-memory killer: SIGKILL to the job's biggest process (the command's children before
        the command itself); the job ends in stage ERROR with ``message`` (what the service says then is not
        documented: none by default)."""
        job = self._jobs[job_id]
        job.killed, job.kill_message = True, message
        members = _group(job.proc.pid)
        victims = [pid for pid in members if pid != job.proc.pid] or [job.proc.pid]
        os.kill(max(victims, key=_rss), signal.SIGKILL)

    def job(self, job_id):
        """What the service knows of a job, for assertions: spec, stage, message and output lines (no secrets)."""
        job = self._jobs[job_id]
        with job.ended:
            return {**self._info(job), "lines": [line for _, line in job.lines], "folder": job.folder,
                    "mounts": dict(job.mounts)}

    def secrets(self, job_id):
        """The secrets the job was given (the one place a token may appear)."""
        return dict(self._jobs[job_id].secrets)

    def ids(self):
        with self._lock:
            return list(self._jobs)

    def wait(self, job_id, timeout=300):
        """Wait until the job has ended and its output is complete; returns its stage."""
        job = self._jobs[job_id]
        with job.ended:
            job.ended.wait_for(lambda: job.done, timeout)
        return job.stage

    # ----------------------------------------------------------------- HTTP
    def dispatch(self, h, method, path, query, body, token):
        """Answer one /api/jobs request (and stream logs) on the hub's handler ``h``."""
        seg = [s for s in path.split("/")[3:] if s]
        job = route = None
        try:
            user = self.hub._users.get(token) if token else None
            if token and user is None:
                raise _Refused(401, "Invalid credentials in Authorization header")
            if seg == ["hardware"] and method == "GET":
                return self.hub._send(h, method, 200, self.hardware)
            if user is None:
                raise _Refused(401, "You must be authenticated to use Jobs")
            namespace = seg[0] if seg else ""
            if namespace != user["name"] and namespace not in user["orgs"]:
                raise _Refused(403, f"You don't have the rights to use Jobs in the namespace {namespace!r}")
            if len(seg) == 1 and method == "POST":
                return self.hub._send(h, method, 200, self._create(namespace, user, token, json.loads(body or b"{}")))
            if len(seg) == 1 and method == "GET":
                return self.hub._send(h, method, 200, self._list(namespace, query))
            job = self._jobs.get(seg[1]) if len(seg) >= 2 else None
            if job is None or job.namespace != namespace:
                job = None
                raise _Refused(404, "Job not found")
            route = "/".join(seg[2:]) or "inspect"
            if len(seg) == 2 and method == "GET":
                return self._answer(h, method, job, route, 200, self._info(job))
            if seg[2:] == ["cancel"] and method == "POST":
                self._cancel(job)
                return self._answer(h, method, job, route, 200, {})
            if seg[2:] == ["logs"] and method == "GET":
                fault = job.logs_fail
                if fault is not None and (fault[1] is None or self.clock() < fault[1]):
                    # a gateway's page, not the API's JSON: no X-Error-Message (what the service sends is not documented)
                    job.calls.append((self.clock(), route, fault[0]))
                    return self.hub._send(h, method, fault[0], b"<html><body><h1>503 Service Temporarily Unavailable"
                                                               b"</h1></body></html>", [("Content-Type", "text/html")])
                if job.stage == "SCHEDULING" and self.scheduling_logs == "404":
                    raise _Refused(404, "Job logs are not available yet")
                job.calls.append((self.clock(), route, 200))
                return self._stream(h, job, query)
            raise _Refused(404, f"test hub: no Jobs route for {method} {path}")
        except _Refused as e:
            if job is not None:
                job.calls.append((self.clock(), route, e.status))
            return self.hub._send(h, method, e.status, {"error": e.message}, [("X-Error-Message", e.message)])

    def _answer(self, h, method, job, route, status, payload):
        job.calls.append((self.clock(), route, status))
        return self.hub._send(h, method, status, payload)

    # ----------------------------------------------------------------- the service
    def _create(self, namespace, user, token, spec):
        with self._lock:
            if namespace in self._refusals:
                raise _Refused(*self._refusals[namespace])
            if spec.get("flavor") not in {f["name"] for f in self.hardware}:
                raise _Refused(400, f"Invalid flavor: {spec.get('flavor')!r}")
            if not isinstance(spec.get("command"), list) or not spec["command"]:
                raise _Refused(400, "A job needs a command")
            job_id = _secrets.token_hex(12)
            folder = self._root / job_id
            (folder / "tmp").mkdir(parents=True)
            try:  # a volume that cannot be mounted refuses the job (unverified: see jobs_volumes)
                spec = {**spec, "volumes": jobs_volumes.check(spec.get("volumes"))}
                # read with the rights of the token that starts the job (its owner's)
                mounts = jobs_volumes.materialise(self.hub, spec["volumes"], user, token, folder / "mounts")
            except jobs_volumes.VolumeRefused as e:
                shutil.rmtree(folder, ignore_errors=True)
                raise _Refused(e.status, e.message) from None
            job = _Job(job_id, namespace, spec, dict(spec.get("secrets") or {}), folder)
            job.mounts = mounts
            job.owner = {"id": user["name"], "name": namespace, "type": "user" if namespace == user["name"] else "org"}
            job.message = self.scheduling_message
            if self._logs_fault is not None:
                status, for_s = self._logs_fault
                job.logs_fail = (status, None if for_s is None else self.clock() + for_s)
            self._jobs[job_id] = job
        timer = threading.Timer(self.scheduling_s, self._schedule, args=(job,))
        timer.daemon = True
        timer.start()
        return self._info(job)

    def _schedule(self, job):
        with job.ended:
            if job.stage != "SCHEDULING":  # cancelled while scheduling
                return
            job.stage, job.message, job.started = "RUNNING", None, time.time()
            job.lines.append((time.time(), f"===== Job started at {_iso(time.time())} ====="))
            job.ended.notify_all()
        self._run(job)

    def _run(self, job):
        if str(job.spec.get("dockerImage") or "").startswith(PYTORCH_IMAGE):
            # A public PyTorch image: torch and pip, no phi3space. Its pip installs offline and without dependencies
            # (they are this Python's), into the job's own folder, without compiling: a module imported from there
            # leaves its bytecode beside it, proof that the job ran the code it installed.
            site = str(job.folder / "site")
            image = {"PYTHONPATH": site, "PIP_TARGET": site, "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1",
                     "PIP_NO_COMPILE": "1"}
        else:  # the Space's image (or one named by PHI3SPACE_JOBS_IMAGE): this checkout's phi3space installed
            image = {"PYTHONPATH": str(REPO)}
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(job.folder),
               "TMPDIR": str(job.folder / "tmp"), "HF_HOME": str(job.folder / "hf"), **image,
               "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8",
               **self.image_env, **{k: jobs_volumes.remap(job.mounts, str(v))
                                    for k, v in (job.spec.get("environment") or {}).items()},
               **{k: str(v) for k, v in job.secrets.items()}}
        argv = [jobs_volumes.remap(job.mounts, a) for a in job.spec["command"] + list(job.spec.get("arguments") or [])]
        try:
            job.proc = subprocess.Popen(argv, cwd=job.folder,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        except OSError as exc:  # no such executable in the "image"
            self._end(job, "ERROR", f"Failed to start the container: {exc.strerror}")
            return
        readers = [threading.Thread(target=self._read, args=(job, stream), daemon=True)
                   for stream in (job.proc.stdout, job.proc.stderr)]
        for r in readers:
            r.start()
        timeout = job.spec.get("timeoutSeconds")
        timer = None
        if timeout:
            timer = threading.Timer(timeout * self.time_scale, self._time_out, args=(job,))
            timer.daemon = True
            timer.start()

        def supervise():
            code = job.proc.wait()
            for r in readers:
                r.join()
            if timer is not None:
                timer.cancel()
            code = code if code >= 0 else 128 - code
            if job.cancelled:
                self._end(job, "CANCELED", None)
            elif job.killed:
                self._end(job, "ERROR", job.kill_message)
            elif code == 0:
                self._end(job, "COMPLETED", None)
            else:
                self._end(job, "ERROR", self.error_message.format(code=code) if self.error_message else None)

        threading.Thread(target=supervise, daemon=True).start()

    def _read(self, job, stream):
        for raw in iter(stream.readline, b""):
            with job.ended:
                job.lines.append((time.time(), raw.decode("utf-8", "replace").rstrip("\r\n")))
                job.ended.notify_all()

    def _time_out(self, job):
        job.killed, job.kill_message = True, "Job timeout"  # the documented status message (docs/hub/jobs-manage.md)
        self._signal(job, signal.SIGKILL)

    def _end(self, job, stage, message):
        with job.ended:
            job.stage, job.message = stage, message
            job.finished, job.done = time.time(), True
            job.ended.notify_all()

    def _cancel(self, job):
        """Answered at once; the job runs on for ``cancel_s``, then its command gets SIGTERM (as a container's first
        process does) and, ``grace_s`` later, everything left SIGKILL. A job still scheduling ends at once."""
        if job.stage in TERMINAL or job.cancelled:
            return
        job.cancelled = True
        with job.ended:
            if job.stage == "SCHEDULING":
                job.stage, job.message, job.finished, job.done = "CANCELED", None, time.time(), True
                job.ended.notify_all()
                return

        def stop():
            self._signal(job, signal.SIGTERM, group=False)
            threading.Timer(self.grace_s, self._signal, args=(job, signal.SIGKILL)).start()

        threading.Timer(self.cancel_s, stop).start()

    @staticmethod
    def _signal(job, sig, group=True):
        if job.proc is not None and job.proc.poll() is None:
            try:
                os.killpg(job.proc.pid, sig) if group else os.kill(job.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _info(self, job):
        spec = job.spec
        ran = ((job.finished or time.time()) - job.started) / self.time_scale if job.started else 0
        waited = ((job.started or job.finished or time.time()) - job.created) / self.time_scale
        info = {"id": job.id, "createdAt": _iso(job.created), "startedAt": _iso(job.started) if job.started else None,
                "finishedAt": _iso(job.finished) if job.finished else None,
                "command": spec["command"], "arguments": spec.get("arguments") or [],
                "environment": dict(spec.get("environment") or {}), "secrets": sorted(job.secrets),
                "flavor": spec.get("flavor"), "labels": dict(spec.get("labels") or {}),
                "status": {"stage": job.stage, "message": job.message}, "owner": job.owner,
                "durations": {"schedulingSecs": int(waited), "runningSecs": int(ran), "totalSecs": int(waited + ran)},
                "timeoutSeconds": spec.get("timeoutSeconds")}
        if spec.get("volumes"):
            info["volumes"] = [dict(v) for v in spec["volumes"]]
        info["spaceId" if "spaceId" in spec else "dockerImage"] = spec.get("spaceId") or spec.get("dockerImage")
        return info

    def _list(self, namespace, query):
        wanted = [tuple(item.split("=", 1)) for item in query.get("label", []) if "=" in item]
        stages = {s.upper() for s in query.get("stage", [])}
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.namespace == namespace]
        return [self._info(j) for j in jobs if all((j.spec.get("labels") or {}).get(k) == v for k, v in wanted)
                and (not stages or j.stage in stages)]

    def _stream(self, h, job, query):
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(data):
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()

        tail = query.get("tail", [None])[0]
        with job.ended:
            sent = max(0, len(job.lines) - int(tail)) if tail is not None else 0
        cut = time.time() + self.stream_cut_s if self.stream_cut_s else None
        try:
            while True:
                if job.stage == "SCHEDULING" and not job.lines:  # nothing yet: an empty stream that ends
                    chunk(b": keep-alive\n\n")
                    break
                with job.ended:
                    job.ended.wait_for(lambda n=sent: job.done or len(job.lines) > n,
                                       timeout=min(10, max(0.05, cut - time.time())) if cut else 10)
                    new, done = job.lines[sent:], job.done
                sent += len(new)
                if new:
                    chunk(b"".join(b"data: " + json.dumps({"data": line, "timestamp": _iso(t)}).encode() + b"\n\n"
                                   for t, line in new))
                elif not done:
                    chunk(b": keep-alive\n\n")
                if done and not new:
                    break
                if cut is not None and time.time() >= cut and not done:
                    if self.stream_cut_drop:  # no end of the chunked body: the client's read fails
                        h.close_connection = True
                        return
                    break
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True


def _group(pgid):
    """The processes of a process group (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def _rss(pid):
    try:
        return int((Path("/proc") / str(pid) / "statm").read_text().split()[1])
    except (OSError, IndexError):
        return 0


class _Refused(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message
