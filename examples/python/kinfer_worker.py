"""kinfer's worker SDK for Python, with the standard library only: the Python
twin of the Go package pkg/worker. Copy this file next to your worker.

    import kinfer_worker

    def handle(req):
        if not isinstance(req.input, dict) or "text" not in req.input:
            raise kinfer_worker.BadInput('input must be {"text": "..."}')
        return classify(req.input["text"])

    kinfer_worker.run(handle)

The same program works in both of kinfer's modes (docs/workers.md):

- One Job per request (KINFER_REQUEST_ID set): run() reads the request from
  the environment, writes the result as JSON to the termination message file
  (KINFER_RESULT_PATH, else /dev/termination-log) and exits 0. BadInput exits
  42, which kinfer never retries; any other exception exits 1, so Kubernetes
  retries the pod. A result over the 4096 bytes of a termination message goes
  through the manager's work API when kinfer gives one (KINFER_WORK_URL and
  KINFER_REQUEST_NAME), up to 64 KiB; a result that cannot be returned exits 3.
- A pool (KINFER_WORK_URL set, KINFER_REQUEST_ID not): run() takes requests
  from the manager's work API one at a time, renews each lease from a
  background thread while the handler works, reports the result or the error,
  and exits 0 when the manager lets the pod go or on SIGTERM; 1 when the work
  API refuses the pod's token.

run_batch(handler) hands the handler a list of up to KINFER_BATCH_SIZE
requests and expects a list back, one entry per request in the same order:
the result, or an exception instance (BadInput for input that can never
work) for a request that failed.

A handler that works long should watch req.canceled, a threading.Event set
on SIGTERM and, in a pool, when the request's lease is gone (it was canceled,
timed out or handed out again) or its timeout has passed.
"""

import http
import json
import os
import queue
import random
import signal
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime

ENV_REQUEST_ID = "KINFER_REQUEST_ID"
ENV_MODEL = "KINFER_MODEL"
ENV_INPUT = "KINFER_INPUT"
ENV_RESULT_PATH = "KINFER_RESULT_PATH"
ENV_WORK_URL = "KINFER_WORK_URL"
ENV_WORK_TOKEN = "KINFER_WORK_TOKEN"
ENV_POD_NAME = "KINFER_POD_NAME"
ENV_BATCH_SIZE = "KINFER_BATCH_SIZE"
ENV_REQUEST_NAME = "KINFER_REQUEST_NAME"

DEFAULT_RESULT_PATH = "/dev/termination-log"
MAX_RESULT_BYTES = 4096  # what Kubernetes keeps of a termination message
MAX_POOL_RESULT_BYTES = 64 << 10  # what the work API takes as a result

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_RESULT_TOO_LARGE = 3
EXIT_BAD_INPUT = 42

TAKE_WAIT_SECONDS = 20
DEFAULT_LEASE_SECONDS = 30
REPORT_TIMEOUT = 30
MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0


class BadInput(Exception):
    """Input that can never work: the request fails at once, without retries."""


class Request:
    """One request: id (the client's), name (the InferenceRequest's; only a
    pool knows it, else ""), model, input (the decoded JSON, None for none)
    and canceled (a threading.Event: stop working when it is set)."""

    def __init__(self, id, model, input, name=""):
        self.id = id
        self.name = name
        self.model = model
        self.input = input
        self.canceled = threading.Event()

    def __repr__(self):
        return "Request(id=%r, name=%r, model=%r)" % (self.id, self.name, self.model)


def run(handler):
    """Serve requests with handler(req) -> result, then exit the process."""

    def batch(reqs):
        return [_call(handler, req) for req in reqs]

    _serve(batch, 1)


def run_batch(handler):
    """Serve requests with handler(reqs) -> [result or exception, ...], taking
    up to KINFER_BATCH_SIZE at a time in a pool, then exit the process."""
    _serve(handler, _batch_size())


def _call(handler, req):
    try:
        return handler(req)
    except Exception as err:  # the request's failure, not the worker's
        return err


def _log(message):
    print("kinfer worker: %s" % message, file=sys.stderr, flush=True)


def _batch_size():
    value = os.environ.get(ENV_BATCH_SIZE, "")
    if value == "":
        return 1
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        _log("%s=%r is not a positive number; taking one request at a time" % (ENV_BATCH_SIZE, value))
        return 1
    return n


def _describe(err):
    """The message a failure reports: a BadInput's own text; for any other
    exception its type too, since str(KeyError('x')) alone says little."""
    if isinstance(err, BadInput):
        return str(err) or "bad input"
    if isinstance(err, _ResultError):
        return str(err)
    text = str(err)
    return "%s: %s" % (type(err).__name__, text) if text else type(err).__name__


def _encode(result):
    try:
        return json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise _ResultError("the result cannot be encoded as JSON: %s" % err) from err


class _ResultError(Exception):
    """A result that cannot be sent back."""


def _outcomes(handler, reqs):
    """Exactly one outcome per request: a result, or an exception."""
    try:
        got = handler(reqs)
    except Exception as err:
        traceback.print_exc()
        return [err] * len(reqs)
    if not isinstance(got, (list, tuple)) or len(got) != len(reqs):
        n = len(got) if isinstance(got, (list, tuple)) else "no list of"
        return [RuntimeError("the batch handler returned %s outcomes for %d requests" % (n, len(reqs)))] * len(reqs)
    for outcome in got:
        if isinstance(outcome, Exception) and not isinstance(outcome, BadInput):
            traceback.print_exception(type(outcome), outcome, outcome.__traceback__)
    return list(got)


# Signals. A signal handler may run between any two bytecodes of the main
# thread, so it only sets a flag and hands the signal to a thread through a
# SimpleQueue, whose put is safe there; it raises _Terminated only while the
# main thread waits to take work, where stopping at once loses nothing.


class _Terminated(Exception):
    pass


class _Signals:
    def __init__(self):
        self.terminated = False
        self.interruptible = False
        self.stop = threading.Event()
        self._work = []
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        threading.Thread(target=self._cancel_on_signal, daemon=True).start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        self.terminated = True
        self._queue.put(signum)
        if self.interruptible:
            raise _Terminated()

    def _cancel_on_signal(self):
        self._queue.get()
        self.stop.set()
        with self._lock:
            for req in self._work:
                req.canceled.set()

    def working_on(self, reqs):
        with self._lock:
            self._work = list(reqs)
            if self.stop.is_set():
                for req in reqs:
                    req.canceled.set()

    def sleep(self, seconds):
        """Wait, unless SIGTERM comes first: then raise _Terminated."""
        interruptible, self.interruptible = self.interruptible, True
        try:
            if self.terminated:
                raise _Terminated()
            time.sleep(seconds)
        finally:
            self.interruptible = interruptible


def _serve(batch_handler, size):
    signals = _Signals()
    if not os.environ.get(ENV_REQUEST_ID) and os.environ.get(ENV_WORK_URL):
        code = _Pool(signals, size).run(batch_handler)
    else:
        code = _serve_one(signals, batch_handler)
    sys.exit(code)


def _serve_one(signals, batch_handler):
    """One Job per request: the outcome goes to the termination message file."""
    path = os.environ.get(ENV_RESULT_PATH) or DEFAULT_RESULT_PATH

    def finish(code, message):
        try:
            with open(path, "wb") as f:
                f.write(message)
        except OSError as err:
            _log("cannot write the result to %s: %s" % (path, err))
            return EXIT_FAILED
        if code != EXIT_OK:
            _log(message.decode(errors="replace"))
        return code

    try:
        value = json.loads(os.environ.get(ENV_INPUT) or "null", parse_constant=_not_json)
    except ValueError:
        return finish(EXIT_BAD_INPUT, (ENV_INPUT + " is not valid JSON").encode())
    req = Request(os.environ.get(ENV_REQUEST_ID, ""), os.environ.get(ENV_MODEL, ""), value)
    signals.working_on([req])

    outcome = _outcomes(batch_handler, [req])[0]
    if isinstance(outcome, BadInput):
        return finish(EXIT_BAD_INPUT, _describe(outcome).encode())
    if isinstance(outcome, Exception):
        return finish(EXIT_FAILED, _describe(outcome).encode())
    try:
        encoded = _encode(outcome)
    except _ResultError as err:
        return finish(EXIT_FAILED, str(err).encode())
    if len(encoded) > MAX_RESULT_BYTES and len(encoded) <= MAX_POOL_RESULT_BYTES and _can_send_result():
        problem = _send_result(signals, encoded)
        if problem:
            return finish(EXIT_RESULT_TOO_LARGE, problem.encode())
        return finish(EXIT_OK, SENT_RESULT.encode())
    if len(encoded) > MAX_RESULT_BYTES:
        limit = MAX_POOL_RESULT_BYTES if _can_send_result() else MAX_RESULT_BYTES
        return finish(EXIT_RESULT_TOO_LARGE, (
            "the result is %d bytes of JSON; at most %d bytes can be returned, "
            "so store large results elsewhere and return a reference" % (len(encoded), limit)).encode())
    return finish(EXIT_OK, encoded)


# The termination message of a worker whose result went through the work API.
# kinfer has stored the result before the worker exits, so it never reads it.
SENT_RESULT = '{"kinfer":"the result was sent through the work API"}'
SEND_RESULT_SECONDS = 120


def _can_send_result():
    """Whether the environment names a work API that takes this request's
    result: kinfer gives one when the manager serves it."""
    return all(os.environ.get(name) for name in (ENV_WORK_URL, ENV_WORK_TOKEN, ENV_REQUEST_NAME))


def _send_result(signals, encoded):
    """Send a result too large for a termination message through the work
    API; return what went wrong, or ""."""
    path = "/requests/" + urllib.parse.quote(os.environ[ENV_REQUEST_NAME], safe="") + "/result"
    try:
        answer = _Pool(signals, 1)._send_retrying(path, encoded, REPORT_TIMEOUT,
                                                   deadline=time.monotonic() + SEND_RESULT_SECONDS)
    except _Terminated as err:
        problem = str(err)
    else:
        if 200 <= answer.status < 300:
            return ""
        if answer.status == 410:
            return "the request ended before its result could be sent"
        problem = "the work API refused it: %s" % answer
    return ("the result is %d bytes of JSON, too large for a termination message, and could not be sent "
            "through the work API: %s" % (len(encoded), problem))


def _not_json(constant):
    raise ValueError("%s is not JSON" % constant)


# The pool: docs/workers.md, "Pools: many requests per pod (the work API)".


class _Refused(Exception):
    """The work API refuses this pod, and asking again will not change that."""


class _Answer:
    def __init__(self, status, body, retry_after):
        self.status = status
        self.body = body
        self.retry_after = retry_after  # seconds, or None

    def __str__(self):
        try:
            status = "%d %s" % (self.status, http.HTTPStatus(self.status).phrase)
        except ValueError:
            status = str(self.status)
        text = self.body.decode(errors="replace").strip()
        if len(text) > 200:
            text = text[:200] + "…"
        return "%s: %s" % (status, text) if text else status


class _Lease:
    """A request handed out, and what the renewals learn of it."""

    def __init__(self, item, model):
        self.lease = str(item.get("lease", ""))
        self.seconds = item.get("lease_seconds") or DEFAULT_LEASE_SECONDS
        timeout = item.get("timeout_seconds") or 0
        self.deadline = time.monotonic() + timeout if timeout > 0 else None
        self.gone = False
        self.req = Request(str(item.get("id", "")), model, item.get("input"), name=str(item.get("name", "")))

    def __str__(self):
        return "request " + (self.req.name or self.req.id)

    def path(self, call):
        return "/leases/" + urllib.parse.quote(self.lease, safe="") + "/" + call


class _Pool:
    def __init__(self, signals, size):
        self.signals = signals
        self.size = size
        self.base = os.environ.get(ENV_WORK_URL, "").rstrip("/")
        self.token = os.environ.get(ENV_WORK_TOKEN, "")
        self.pod = os.environ.get(ENV_POD_NAME, "")
        self.model = os.environ.get(ENV_MODEL, "")

    def run(self, handler):
        while not self.signals.terminated:
            try:
                take = self._take()
                self._serve_batch(handler, take.get("items") or [])
            except _Terminated:
                break
            except _Refused as err:
                _log(str(err))
                return EXIT_FAILED
            if take.get("exit"):
                _log("the manager needs this pod no more; exiting")
                return EXIT_OK
        _log("stopping: the pod is being terminated")
        return EXIT_OK

    def _take(self):
        body = json.dumps({"max": self.size, "wait_seconds": TAKE_WAIT_SECONDS}).encode()
        self.signals.interruptible = True
        try:
            if self.signals.terminated:
                raise _Terminated()
            answer = self._send_retrying("/take", body, TAKE_WAIT_SECONDS + 15)
        finally:
            self.signals.interruptible = False
        if answer.status != 200:
            raise self._refused("/take", answer)
        try:
            take = json.loads(answer.body)
            if not isinstance(take, dict):
                raise ValueError("not an object")
        except ValueError as err:
            raise _Refused("the work API's answer to /take is not a take's answer: %s" % err) from err
        return take

    def _serve_batch(self, handler, items):
        if not items:
            return
        leases = [_Lease(item, self.model) for item in items]
        self.signals.working_on([lease.req for lease in leases])
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(leases, done), daemon=True)
        renewer.start()
        try:
            outcomes = _outcomes(handler, [lease.req for lease in leases])
        finally:
            done.set()
            renewer.join()
            self.signals.working_on([])
        for lease, outcome in zip(leases, outcomes):
            if lease.gone:
                _log("dropped the outcome of %s: its lease is gone" % lease)
                continue
            self._report(lease, outcome)

    def _renew(self, leases, done):
        """Renew each lease a third of its lease time after the last renewal,
        and set req.canceled when its lease is gone or its timeout passed."""
        next_renewal = time.monotonic() + min(lease.seconds for lease in leases) / 3
        while True:
            now = time.monotonic()
            wake = min([next_renewal] + [lease.deadline for lease in leases
                                         if lease.deadline is not None and not lease.req.canceled.is_set()])
            if done.wait(max(wake - now, 0)):
                return
            now = time.monotonic()
            for lease in leases:
                if lease.deadline is not None and now >= lease.deadline and not lease.req.canceled.is_set():
                    _log("stopping %s: its timeout has passed" % lease)
                    lease.req.canceled.set()
            if now < next_renewal:
                continue
            for lease in leases:
                if not lease.gone:
                    self._renew_lease(lease)
            live = [lease.seconds for lease in leases if not lease.gone]
            if not live:
                return
            next_renewal = time.monotonic() + min(live) / 3

    def _renew_lease(self, lease):
        try:
            answer = self._send(lease.path("renew"), b"", lease.seconds)
        except OSError as err:
            _log("cannot renew the lease of %s: %s" % (lease, err))
            return
        if answer.status == 410:
            _log("stopping %s: its lease is gone: it was canceled, timed out or handed out again" % lease)
            lease.gone = True
            lease.req.canceled.set()
        elif answer.status == 200:
            try:
                seconds = json.loads(answer.body).get("lease_seconds")
            except (ValueError, AttributeError):
                seconds = None
            if isinstance(seconds, int) and seconds > 0:
                lease.seconds = seconds
        else:
            _log("cannot renew the lease of %s: %s" % (lease, answer))

    def _report(self, lease, outcome):
        """Send the result, or the error. After SIGTERM an error is not sent,
        since it most likely says the work was stopped; the request whose lease
        expires is handed out again."""
        failure = outcome if isinstance(outcome, Exception) else None
        if failure is None:
            try:
                body = _encode(outcome)
                if len(body) > MAX_POOL_RESULT_BYTES:
                    failure = _ResultError(
                        "the result is %d bytes of JSON; the work API takes at most %d bytes, "
                        "so store large results elsewhere and return a reference" % (len(body), MAX_POOL_RESULT_BYTES))
            except _ResultError as err:
                failure = err
        if failure is None:
            path = lease.path("result")
        else:
            if self.signals.terminated:
                _log("abandoned %s as the pod is being terminated (%s); it will be handed out again"
                     % (lease, _describe(failure)))
                return
            message = _describe(failure)
            _log("%s failed: %s" % (lease, message))
            path = lease.path("error")
            body = json.dumps({"message": message, "bad_input": isinstance(failure, BadInput)}).encode()
        try:
            answer = self._send_retrying(path, body, REPORT_TIMEOUT)
        except _Terminated as err:
            _log("cannot report the outcome of %s: %s" % (lease, err))
            return
        if 200 <= answer.status < 300:
            return
        if answer.status == 410:
            _log("dropped the outcome of %s: the request has already ended" % lease)
        elif answer.status == 401:
            raise self._refused(path, answer)
        else:
            _log("the work API refused the outcome of %s: %s" % (lease, answer))

    def _refused(self, path, answer):
        if answer.status == 401:
            return _Refused("the work API refused this pod: POST %s answered %s; is %s this model's work token?"
                            % (path, answer, ENV_WORK_TOKEN))
        return _Refused("the work API refused this pod: POST %s answered %s; is %s this model's work URL?"
                        % (path, answer, ENV_WORK_URL))

    def _send(self, path, body, timeout):
        """One call. OSError means the manager did not answer."""
        request = urllib.request.Request(self.base + path, data=body, method="POST", headers={
            "Authorization": "Bearer " + self.token,
            "Kinfer-Pod": self.pod,
            "Content-Type": "application/json",
        })
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return _Answer(response.status, response.read(), None)
        except urllib.error.HTTPError as err:
            try:
                return _Answer(err.code, err.read(), _retry_after(err.headers.get("Retry-After")))
            finally:
                err.close()

    def _send_retrying(self, path, body, timeout, deadline=None):
        """Call until the manager gives an answer other than "not now" (5xx,
        429), waiting as Retry-After says or else longer each time. SIGTERM,
        or the time.monotonic() deadline passing, ends the waiting with
        _Terminated."""
        attempt = 0
        while True:
            try:
                answer = self._send(path, body, timeout)
                if answer.status != 429 and answer.status < 500:
                    return answer
                problem = str(answer)
                wait = min(answer.retry_after, MAX_BACKOFF) if answer.retry_after else _backoff(attempt)
            except OSError as err:
                problem = str(getattr(err, "reason", err))
                wait = _backoff(attempt)
            if self.signals.terminated:
                raise _Terminated("POST %s: %s, and the pod is being terminated" % (path, problem))
            if deadline is not None and time.monotonic() + wait > deadline:
                raise _Terminated("POST %s: %s, and there is no time left to try again" % (path, problem))
            _log("POST %s: %s; trying again in %.1fs" % (path, problem, wait))
            try:
                self.signals.sleep(wait)
            except _Terminated:
                raise _Terminated("POST %s: %s, and the pod is being terminated" % (path, problem)) from None
            attempt += 1


def _backoff(attempt):
    """Doubles from MIN_BACKOFF up to MAX_BACKOFF, jittered so that a pool's
    pods do not all call at once when the manager comes back."""
    wait = min(MIN_BACKOFF * 2 ** min(attempt, 30), MAX_BACKOFF)
    return wait / 2 + random.uniform(0, wait / 2)


def _retry_after(value):
    if not value:
        return None
    try:
        return max(int(value), 0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0)
    except (TypeError, ValueError):
        return None
