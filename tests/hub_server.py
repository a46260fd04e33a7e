"""A small Hugging Face Hub stand-in for tests (stdlib only), served on 127.0.0.1.

The real clients (huggingface_hub 2.4, datasets 5.2, transformers, peft) talk to it through ``HF_ENDPOINT``.
Supported (everything kept in memory, no LFS/Xet: preupload answers ``uploadMode: "regular"`` for every file):

* ``GET /api/whoami-v2`` (401 for a missing/unknown token), ``POST /api/validate-yaml`` (always valid)
* ``POST /api/repos/create`` (403 outside the token's namespaces or for a "read" token; 409 + ``url`` if it
  exists), ``DELETE /api/repos/delete``, ``PUT /api/{type}s/{repo}/settings`` (``private``/``gated``)
* ``GET /api/{type}s/{repo}[/revision/{rev}]`` (repo_info / model_info / dataset_info), ``.../auth-check``
* ``POST .../preupload/{rev}``, ``POST .../commit/{rev}`` (ndjson: ``header``, ``file`` base64, ``deletedFile``,
  ``deletedFolder``; ``parentCommit`` checked, ``lfsFile`` and ``create_pr`` refused with 400)
* ``POST/DELETE .../branch/{name}`` (``startingPoint``), ``GET .../refs``, ``GET .../commits/{rev}``
* ``GET .../tree/{rev}[/{path}]?recursive=&expand=`` (one page), ``POST .../paths-info/{rev}``
* ``HEAD/GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}`` with ``ETag`` (git blob sha1), ``X-Repo-Commit``,
  ``Content-Length`` and single ``Range: bytes=a-b`` requests.
* ``GET .../auth-check/write`` (403 without write access), ``GET /api/models?author=&filter=&cardData=`` (tags and
  card data read from each repo's README.md front matter; private repos only for those who may read them),
  ``POST /api/spaces/{repo}/pause`` (the Space's namespace only; recorded in ``paused``)
* ``GET /.well-known/openid-configuration``: the OpenID discovery document a Space's sign-in reads from
  ``OPENID_PROVIDER_URL`` (its endpoints live under ``/oauth/``; ``/oauth/authorize`` is recorded and answers 400).

Errors carry the ``X-Error-Code``/``X-Error-Message`` headers that ``hf_raise_for_status`` maps to exceptions:
``RepoNotFound`` (401 without a token, 404 with one, as the Hub does: unknown *or* private repo),
``GatedRepo`` (401 without a token, 403 with one, on file downloads only), ``RevisionNotFound``,
``EntryNotFound``. An unknown token answers 401 "Invalid credentials in Authorization header" everywhere.
Hugging Face Jobs (``/api/jobs/...``) are stood in for by ``hub.jobs`` (tests/jobs_server.py; repo volumes: tests/jobs_volumes.py).
Private and gated repos are open to the user named like the namespace, to members of that org and to
``owner_token``. Writing needs a "write" token and, in an organisation, a write role there (``org_roles``).
Branch names and revisions may be a branch or a full commit sha.
"""

import base64
import collections
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

from jobs_server import JobsStandIn


class Request(collections.namedtuple("Request", "method path token")):
    """One logged request; compares like the tuple (method, path, token) but never shows the token."""

    def __repr__(self):
        return f"Request({self.method!r}, {self.path!r}, token={'<hidden>' if self.token else None})"


_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SHA = re.compile(r"^[0-9a-f]{40}$")
_counter = itertools.count(1)


class _Err(Exception):
    def __init__(self, status, message, code=None, headers=(), **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.extra = status, message, code, list(headers), extra


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _git_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Commit:
    def __init__(self, files, message, token, branch, author):
        self.oid = hashlib.sha1(f"{next(_counter)}-{time.time()}-{message}".encode()).hexdigest()
        self.files, self.message, self.token, self.branch = files, message, token, branch
        self.author, self.date, self.changed = author, _now(), sorted(files)


class _Repo:
    def __init__(self, repo_id, repo_type, private, gated, owner_token, files, author):
        self.id, self.type, self.private, self.gated = repo_id, repo_type, private, gated
        self.namespace, self.owner_token = repo_id.split("/")[0], owner_token
        self.created = _now()
        self.branches = {"main": [_Commit(dict(files), "initial commit", owner_token, "main", author)]}
        self.pushed = []  # commits received through the commit endpoint, oldest first


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # avoid 40 ms delayed-ACK stalls on keep-alive connections
    hub = None  # set by HubServer.start on a subclass

    def log_message(self, *args):  # keep pytest output (and tokens) quiet
        pass

    def setup(self):
        super().setup()
        with self.hub._lock:
            self.hub._conns.add(self.connection)

    def finish(self):
        with self.hub._lock:
            self.hub._conns.discard(self.connection)
        super().finish()

    def _do(self):
        self.hub._dispatch(self, self.command)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _do


class HubServer:
    """In-memory Hub served by a ThreadingHTTPServer in a daemon thread; inspect it from tests."""

    def __init__(self):
        self._lock = threading.RLock()
        self._server, self._port, self._down, self._conns = None, None, False, set()
        self.jobs = JobsStandIn(self)
        self.reset()

    # ----------------------------------------------------------------- public API
    def start(self):
        """Bind 127.0.0.1 on a free port, serve in a daemon thread and return self."""
        self._listen(0)
        return self

    def stop(self):
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _listen(self, port):
        self._server = ThreadingHTTPServer(("127.0.0.1", port), type("Handler", (_Handler,), {"hub": self}))
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="hub-server").start()

    @property
    def down(self):
        """Set to True to simulate the server gone: the port refuses connections and open keep-alive
        connections are cut (clients get httpx2.ConnectError); False listens again on the same port."""
        return self._down

    @down.setter
    def down(self, value):
        with self._lock:
            if value and not self._down and self._server is not None:
                self.stop()
                for conn in list(self._conns):
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            elif not value and self._down and self._port:
                self._listen(self._port)
            self._down = bool(value)

    @property
    def url(self):
        """Base URL to put in HF_ENDPOINT, e.g. ``http://127.0.0.1:54321``."""
        return f"http://127.0.0.1:{self._port}"

    def reset(self):
        """Drop all repos, users, faults and the request log; the server keeps running."""
        with self._lock:
            self._repos, self._users, self._faults = {}, {}, []
            self.paused = []  # (space id, token) of each accepted pause request
            self.requests = []  # Request(method, path incl. query, token or None) for every request
            self.down, self._fail_all = False, None
        self.jobs.reset()

    def add_user(self, name, token, orgs=(), role="write", org_roles=None):
        """Register user ``name`` with access token ``token`` (role "write" or "read") and org memberships;
        ``org_roles`` ({org: "read"}) makes a membership read-only (as an org the token was not granted for)."""
        with self._lock:
            self._users[token] = {"name": name, "orgs": list(orgs), "role": role, "org_roles": dict(org_roles or {})}

    def add_repo(self, repo_id, files=None, repo_type="model", private=False, gated=False, owner_token=None):
        """Seed a repo whose ``main`` holds ``files`` ({path: bytes|str}); not listed by ``commits()``."""
        files = {p: c.encode() if isinstance(c, str) else bytes(c) for p, c in (files or {}).items()}
        with self._lock:
            self._repos[(repo_type, repo_id)] = _Repo(repo_id, repo_type, private, gated, owner_token, files,
                                                     repo_id.split("/")[0])

    def commits(self, repo_id, repo_type="model"):
        """Commits pushed through the API, oldest first: {"branch","token","files","message","oid"}."""
        with self._lock:
            return [{"branch": c.branch, "token": c.token, "files": c.changed, "message": c.message,
                     "oid": c.oid} for c in self._repos[(repo_type, repo_id)].pushed]

    def files(self, repo_id, revision="main", repo_type="model"):
        """{path: bytes} of the repo at ``revision`` (branch name or commit sha)."""
        with self._lock:
            return dict(self._resolve(self._repos[(repo_type, repo_id)], revision)[-1].files)

    def repo(self, repo_id, repo_type="model"):
        """Summary of a repo: id, type, private, gated, branches {name: head sha}; None if it does not exist."""
        with self._lock:
            r = self._repos.get((repo_type, repo_id))
            return r and {"id": r.id, "type": r.type, "private": r.private, "gated": r.gated,
                          "branches": {b: c[-1].oid for b, c in r.branches.items()}}

    def fail_next(self, n, status=500, path_contains="/commit/", method=None):
        """Answer the next ``n`` requests whose path contains ``path_contains`` with ``status``."""
        with self._lock:
            self._faults.append([n, status, path_contains, method])

    def fail_all(self, status=503):
        """Answer every request with ``status`` until ``heal()``."""
        self._fail_all = status

    def heal(self):
        """Undo ``fail_all``, ``fail_next`` and ``down``."""
        with self._lock:
            self._fail_all, self._faults, self.down = None, [], False

    # ----------------------------------------------------------------- HTTP plumbing
    def _dispatch(self, h, method):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        auth = h.headers.get("Authorization") or ""
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        with self._lock:
            self.requests.append(Request(method, h.path, token))
            if self._down:  # a request that slipped in while "down": drop it without answering
                h.close_connection = True
                return
            status = self._fail_all or self._take_fault(method, h.path)
        if status:
            return self._send(h, method, status, {"error": f"injected fault {status}"})
        path, _, query = h.path.partition("?")
        if path.startswith("/api/jobs/"):  # answered (and logs streamed) outside the lock
            return self.jobs.dispatch(h, method, unquote(path), parse_qs(query), body, token)
        try:
            with self._lock:
                status, payload, headers = self._route(method, path.split("/")[1:], parse_qs(query), body,
                                                       h.headers, token)
        except _Err as e:
            headers = e.headers + [("X-Error-Message", e.message)] + ([("X-Error-Code", e.code)] if e.code else [])
            status, payload = e.status, {"error": e.message, **e.extra}
        except Exception as e:  # a bug here or a request we do not understand: answer instead of hanging up
            status, payload, headers = 500, {"error": f"test hub error: {type(e).__name__}: {e}"}, []
        self._send(h, method, status, payload, headers)

    def _take_fault(self, method, path):
        for fault in self._faults:
            if fault[0] > 0 and fault[2] in path and fault[3] in (None, method):
                fault[0] -= 1
                return fault[1]
        return None

    @staticmethod
    def _send(h, method, status, payload, headers=()):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        for key, value in headers:
            h.send_header(key, value)
        if not isinstance(payload, bytes):
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(body)

    # ----------------------------------------------------------------- auth helpers
    def _user(self, token):
        if token is None:
            return None
        if token not in self._users:
            raise _Err(401, "Invalid credentials in Authorization header")
        return self._users[token]

    @staticmethod
    def _member(user, namespace):
        return user is not None and (user["name"] == namespace or namespace in user["orgs"])

    def _allowed(self, repo, user, token):
        return self._member(user, repo.namespace) or (token is not None and token == repo.owner_token)

    @staticmethod
    def _writer(user, namespace):
        """May ``user`` create and write repos in ``namespace``?"""
        if user is None or user["role"] != "write" or not HubServer._member(user, namespace):
            return False
        return user["name"] == namespace or user.get("org_roles", {}).get(namespace, "write") == "write"

    def _get_repo(self, repo_type, repo_id, user, token, write=False):
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._allowed(repo, user, token)):
            raise _Err(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write and not (self._writer(user, repo.namespace) or (token is not None and token == repo.owner_token
                                                                  and user["role"] == "write")):
            raise _Err(403, f"You don't have the rights to write to {repo_type}s/{repo_id}")
        return repo

    def _resolve(self, repo, rev):
        """History (list of commits, oldest first) ending at branch or commit ``rev``."""
        rev = rev[len("refs/heads/"):] if rev.startswith("refs/heads/") else rev
        if rev in repo.branches:
            return repo.branches[rev]
        for chain in repo.branches.values():
            for i, c in enumerate(chain):
                if _SHA.match(rev) and c.oid == rev:
                    return chain[: i + 1]
        raise _Err(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    # ----------------------------------------------------------------- routes
    def _route(self, method, seg, query, body, headers, token):
        seg = [unquote(s) for s in seg]
        user = self._user(token)
        if seg[:2] == ["api", "whoami-v2"]:
            if user is None:
                raise _Err(401, "Invalid credentials in Authorization header")
            return 200, {"type": "user", "id": user["name"], "name": user["name"], "fullname": user["name"],
                         "orgs": [{"name": o, "type": "org", "roleInOrg": user.get("org_roles", {}).get(o, "write")}
                                  for o in user["orgs"]],
                         "auth": {"type": "access_token",
                                  "accessToken": {"displayName": "test", "role": user["role"]}}}, []
        if seg[:2] == ["api", "agent-harnesses"]:  # huggingface_hub's best-effort agent detection
            return 200, {"standardEnvVars": [], "harnesses": {}}, []
        if seg[:2] == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}, []
        if seg == [".well-known", "openid-configuration"]:
            return 200, self._openid_configuration(), []
        if seg[:1] == ["oauth"]:
            raise _Err(400, "test hub: sign-in is not simulated past the discovery document")
        if seg == ["api", "models"] and method == "GET":
            return 200, self._list_models(query, user, token), []
        if seg[:2] == ["api", "spaces"] and len(seg) == 5 and seg[4] == "pause" and method == "POST":
            return self._pause(f"{seg[2]}/{seg[3]}", user, token)
        if seg[:2] == ["api", "repos"] and len(seg) == 3:
            return self._repos_op(seg[2], json.loads(body or b"{}"), user, token)
        if len(seg) >= 4 and seg[0] == "api" and seg[1] in _TYPES:
            return self._api(method, _TYPES[seg[1]], f"{seg[2]}/{seg[3]}", seg[4:], query, body, user, token)
        repo_type = _TYPES.get(seg[0]) if seg[0] in ("datasets", "spaces") else "model"
        seg = seg[1:] if repo_type != "model" else seg
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._download(repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]), headers, user,
                                  token)
        raise _Err(404, f"test hub: no route for {method} /{'/'.join(seg)}")

    def _repos_op(self, op, payload, user, token):
        namespace = payload.get("organization") or (user or {}).get("name")
        repo_type = payload.get("type") or "model"
        repo_id, key = f"{namespace}/{payload.get('name')}", (repo_type, f"{namespace}/{payload.get('name')}")
        if user is None:
            raise _Err(401, "You must be authenticated to do this")
        if op == "delete":
            self._get_repo(repo_type, repo_id, user, token, write=True)
            del self._repos[key]
            return 200, {}, []
        if op != "create":
            raise _Err(404, f"test hub: no route for /api/repos/{op}")
        existing = self._repos.get(key)
        if existing is not None and (not existing.private or self._allowed(existing, user, token)):
            raise _Err(409, f"You already created this {repo_type} repo: {repo_id}",
                       url=f"{self.url}/{_PREFIX[repo_type]}{repo_id}")
        if not self._writer(user, namespace):
            raise _Err(403, f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"')
        url = f"{self.url}/{_PREFIX[repo_type]}{repo_id}"
        if key in self._repos:
            raise _Err(409, f"You already created this {repo_type} repo: {repo_id}", url=url)
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        self._repos[key] = _Repo(repo_id, repo_type, private, False, None, {}, user["name"])
        return 200, {"url": url, "name": repo_id, "id": repo_id}, []

    def _api(self, method, repo_type, repo_id, rest, query, body, user, token):
        op = rest[0] if rest else ""
        write = (method, op) in {("POST", "commit"), ("POST", "branch"), ("DELETE", "branch"), ("PUT", "settings")}
        repo = self._get_repo(repo_type, repo_id, user, token, write=write)
        if method == "GET" and op in ("", "revision"):
            chain = self._resolve(repo, rest[1] if op else "main")
            info = {"id": repo.id, "author": repo.namespace, "sha": chain[-1].oid, "private": repo.private,
                    "gated": "auto" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                    "tags": [], "createdAt": repo.created, "lastModified": chain[-1].date,
                    "siblings": [{"rfilename": p} for p in sorted(chain[-1].files)]}
            if repo_type == "model":
                info["modelId"] = repo.id
            return 200, info, []
        if method == "GET" and op == "auth-check" and rest[1:] == ["write"]:  # auth_check(write=True)
            self._get_repo(repo_type, repo_id, user, token, write=True)
            return 200, {}, []
        if method == "GET" and op == "auth-check":  # huggingface_hub.auth_check: read access, gates included
            if repo.gated and not self._allowed(repo, user, token):
                raise _Err(401 if user is None else 403, f"Access to {repo_type} {repo_id} is restricted.", "GatedRepo")
            return 200, {}, []
        if method == "PUT" and op == "settings":
            settings = json.loads(body or b"{}")
            repo.private = settings.get("private", repo.private)
            repo.gated = bool(settings.get("gated", repo.gated))
            return 200, {}, []
        if method == "POST" and op == "preupload":
            files = self._resolve(repo, rest[1])[-1].files
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                    "oid": _git_sha1(files[f["path"]]) if f["path"] in files else None}
                                   for f in json.loads(body)["files"]]}, []
        if method == "POST" and op == "commit":
            return self._commit(repo, rest[1], query, body, user, token)
        if op == "branch" and len(rest) == 2:
            name = rest[1]
            if method == "DELETE":
                if name == "main" or name not in repo.branches:
                    raise _Err(404 if name != "main" else 403, f"Cannot delete branch {name}")
                del repo.branches[name]
                return 200, {}, []
            if name in repo.branches:
                raise _Err(409, f"Reference already exists: refs/heads/{name}")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.branches[name] = list(self._resolve(repo, start))
            return 200, {}, []
        if method == "GET" and op == "refs":
            return 200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c[-1].oid}
                                      for b, c in repo.branches.items()],
                         "converts": [], "tags": [], "pullRequests": []}, []
        if method == "GET" and op == "commits" and len(rest) >= 2:
            return 200, [{"id": c.oid, "title": c.message, "message": c.message, "date": c.date,
                          "authors": [{"user": c.author}]}
                         for c in reversed(self._resolve(repo, rest[1]))], []
        if method == "GET" and op == "tree" and len(rest) >= 2:
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
            return 200, self._tree(self._resolve(repo, rest[1]), "/".join(rest[2:]), recursive, expand), []
        if method == "POST" and op == "paths-info" and len(rest) >= 2:
            form = parse_qs(body.decode())
            expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
            entries = self._tree(self._resolve(repo, rest[1]), "", True, expand)
            wanted = {p.strip("/") for p in form.get("paths", [])}
            return 200, [e for e in entries if e["path"] in wanted], []
        raise _Err(404, f"test hub: no route for {method} {op}")

    def _openid_configuration(self):
        base = self.url
        return {"issuer": base, "authorization_endpoint": f"{base}/oauth/authorize",
                "token_endpoint": f"{base}/oauth/token", "userinfo_endpoint": f"{base}/oauth/userinfo",
                "jwks_uri": f"{base}/oauth/jwks", "response_types_supported": ["code"],
                "scopes_supported": ["openid", "profile", "email", "read-repos", "gated-repos", "contribute-repos",
                                     "write-repos", "manage-repos", "inference-api", "jobs"],
                "id_token_signing_alg_values_supported": ["RS256"], "subject_types_supported": ["public"]}

    @staticmethod
    def _front_matter(files):
        text = files.get("README.md", b"").decode("utf-8", "replace")
        if not text.startswith("---"):
            return {}
        import yaml

        try:
            data = yaml.safe_load(text.split("---", 2)[1])
        except yaml.YAMLError:
            return {}
        return data if isinstance(data, dict) else {}

    def _list_models(self, query, user, token):
        """list_models: ``author``, ``filter`` (every one must be among the repo's tags), ``search``, ``cardData``."""
        author, search = query.get("author", [None])[0], query.get("search", [""])[0]
        wanted = set(query.get("filter", []))
        out = []
        for (repo_type, repo_id), repo in sorted(self._repos.items()):
            if repo_type != "model" or (author and repo.namespace != author) or search not in repo_id:
                continue
            if repo.private and not self._allowed(repo, user, token):
                continue
            head = repo.branches["main"][-1]
            card = self._front_matter(head.files)
            tags = [t for t in card.get("tags") or [] if isinstance(t, str)]
            tags += [t for t in (card.get("library_name"), card.get("pipeline_tag")) if isinstance(t, str)]
            if not wanted <= set(tags):
                continue
            item = {"id": repo.id, "_id": repo.id, "modelId": repo.id, "author": repo.namespace, "private": repo.private,
                    "tags": tags, "sha": head.oid, "createdAt": repo.created, "lastModified": head.date,
                    "downloads": 0, "likes": 0}
            if query.get("cardData", ["false"])[0].lower() in ("1", "true"):
                item["cardData"] = card
            out.append(item)
        return out

    def _pause(self, space_id, user, token):
        repo = self._get_repo("space", space_id, user, token)
        if not self._writer(user, repo.namespace):
            raise _Err(403, "Only the owner of a Space can pause it")
        self.paused.append((space_id, token))
        return 200, {"stage": "PAUSED", "hardware": {"current": None, "requested": "l4x1"}, "storage": None,
                     "gcTimeout": None, "replicas": None, "sdk": "gradio", "sdkVersion": "6.31.0"}, []

    def _tree(self, chain, prefix, recursive, expand):
        files, head, prefix = chain[-1].files, chain[-1], prefix.strip("/")
        base = prefix + "/" if prefix else ""
        if prefix in files:
            raise _Err(404, f"{prefix} is a file, not a folder", "EntryNotFound")
        out = {}
        for path in sorted(files):
            if not path.startswith(base):
                continue
            parts = path[len(base):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = base + "/".join(parts[:depth])
                oid = hashlib.sha1(f"{head.oid}:{folder}".encode()).hexdigest()
                out[folder] = {"type": "directory", "oid": oid, "size": 0, "path": folder}
            if recursive or len(parts) == 1:
                data = files[path]
                out[path] = {"type": "file", "oid": _git_sha1(data), "size": len(data), "path": path}
                if expand:
                    last = next(c for c in chain if c.files.get(path) == data and all(
                        later.files.get(path) == data for later in chain[chain.index(c):]))
                    out[path]["lastCommit"] = {"id": last.oid, "title": last.message, "date": last.date}
        if prefix and not out:
            raise _Err(404, f"{prefix} does not exist", "EntryNotFound")
        return list(out.values())

    def _commit(self, repo, branch, query, body, user, token):
        if "create_pr" in query:
            raise _Err(400, "test hub: create_pr is not supported")
        chain = self._resolve(repo, branch)
        if branch not in repo.branches:
            raise _Err(400, f"Cannot commit to {branch}: not a branch")
        files, changed, message = dict(chain[-1].files), [], ""
        for line in filter(None, body.splitlines()):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and parent != chain[-1].oid:
                    raise _Err(412, f"Parent commit {parent} is not the head of {branch}")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                changed.append(value["path"])
            elif key in ("deletedFile", "deletedFolder"):
                path = value["path"].rstrip("/")
                gone = [p for p in files if p == path or (key == "deletedFolder" and p.startswith(path + "/"))]
                if not gone:
                    raise _Err(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
                changed += gone
            else:
                raise _Err(400, f"test hub: commit operation {key!r} not supported (LFS is never requested)")
        commit = _Commit(files, message, token, branch, user["name"])
        commit.changed = sorted(set(changed))
        repo.branches[branch].append(commit)
        repo.pushed.append(commit)
        url = f"{self.url}/{_PREFIX[repo.type]}{repo.id}/commit/{commit.oid}"
        return 200, {"success": True, "commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None}, []

    def _download(self, repo_type, repo_id, rev, path, headers, user, token):
        repo = self._get_repo(repo_type, repo_id, user, token)
        head = self._resolve(repo, rev)[-1]
        if repo.gated and not self._allowed(repo, user, token):
            raise _Err(401 if user is None else 403, f"Access to {repo_type} {repo_id} is restricted. You must "
                       "have access to it and be authenticated to access it. Please log in.", "GatedRepo")
        if path not in head.files:
            raise _Err(404, "Entry not found", "EntryNotFound", [("X-Repo-Commit", head.oid)])
        data, status = head.files[path], 200
        out = [("ETag", f'"{_git_sha1(data)}"'), ("X-Repo-Commit", head.oid), ("Accept-Ranges", "bytes"),
               ("Content-Type", "application/octet-stream")]
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range") or "")
        if match and data:
            start, end = int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)
            if start >= len(data):
                raise _Err(416, "Requested range not satisfiable", headers=[("Content-Range", f"bytes */{len(data)}")])
            out.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
            data, status = data[start:end + 1], 206
        return status, data, out
