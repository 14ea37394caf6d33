"""The rating web app (Flask on waitress): a rater opens `/r/<token>` and sees one instruction and two blinded
responses in the rater's own order, rates each (Acceptable: Excellent / Acceptable: Sufficient / Not acceptable)
and picks the more helpful one or a tie; keyboard shortcuts, progress, drafts and resuming are in the page. The page
speaks of "Response 1" and "Response 2" only: which method is which is drawn per rater and item on the server and
never sent.

Fit for raters on other machines: every reply carries a strict content security policy and no-referrer,
no-store and no-framing headers; a request body is at most MAX_REQUEST_BYTES and an error page never repeats a
whole submitted value; the access log names the rater, never the URL token (`RedactTokens`). TLS belongs to a
reverse proxy in front (see the README)."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from flask import Flask, Response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, NotFound

from rt_lab.human.assignment import a_on_left, rater_order
from rt_lab.human.store import Rater, Rating, RatingRefused, Store, shown

LABELS = (("excellent", "Acceptable: Excellent"), ("sufficient", "Acceptable: Sufficient"),
          ("not_acceptable", "Not acceptable"))
SIDES = ("left", "right", "tie")  # what the form says; the server turns it into a / b / tie
MAX_REQUEST_BYTES = 64 * 1024  # a rating form is a few hundred bytes
SECURITY_HEADERS = {
    # the page's own script and style sheet, its own form and fetch targets; nothing inline, no frames around it
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a rater's URL (its token) never reaches another site
    "Cache-Control": "no-store",  # nor a shared cache or the next user of a browser
}
TOKEN_IN_PATH = re.compile(r"/r/(?!\[)[^/?#\s\"]+")  # "/r/[name]": the access log's own, already redacted
access_log = logging.getLogger("rt_lab.human.access")


class RedactTokens(logging.Filter):
    """Rater URL tokens out of every log line that passes (Flask's error lines name the request's path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/r/" in message:
            record.msg, record.args = TOKEN_IN_PATH.sub("/r/<token>", message), None
        return True


def create_app(store: Store) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES, MAX_FORM_MEMORY_SIZE=MAX_REQUEST_BYTES)

    def rater_of(token: str) -> Rater:
        rater = store.rater(token)
        if rater is None:
            raise NotFound("This rater link is not known. Use the link you were given.")
        return rater

    @app.after_request
    def secure(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(HTTPException)
    def refused(error: HTTPException) -> tuple[str, int]:
        return render_template("message.html", title=f"{error.code} {error.name}", message=error.description,
                               error=True), error.code or 500

    @app.errorhandler(RatingRefused)
    def rating_refused(error: RatingRefused) -> tuple[str, int]:
        token = request.view_args.get("token") if request.view_args else None
        return render_template("message.html", title="Rating not saved", message=str(error), error=True,
                               link=url_for("rate_page", token=token) if token else None,
                               link_text="Continue rating"), error.status

    @app.get("/")
    def index() -> str:
        return render_template("message.html", title="Human evaluation",
                               message="Open the rater link you were given.")

    @app.get("/r/<token>")
    def rate_page(token: str) -> str:
        rater = rater_of(token)
        order = rater_order(rater.seed, store.visible_item_ids())
        ratings = store.ratings_of(rater.name)
        rated = sum(1 for item_id in order if item_id in ratings and ratings[item_id].submitted)
        item_id = request.args.get("item")
        if item_id is None:
            item_id = next((i for i in order if not (i in ratings and ratings[i].submitted)), None)
        elif item_id not in order:
            raise NotFound(f"There is no item {shown(item_id)} in this study.")
        if item_id is None:
            return render_template("message.html", title="All done",
                                   message=f"You have rated all {len(order)} items. Thank you! You can close this "
                                           "tab.", link=url_for("rate_page", token=token, item=order[-1])
                                   if order else None, link_text="Revise your last rating")
        position = order.index(item_id)
        item = store.visible_item(item_id)
        a_left = a_on_left(rater.seed, item_id)
        rating = ratings.get(item_id, Rating(None, None, None, False))
        left, right = (rating.rating_a, rating.rating_b) if a_left else (rating.rating_b, rating.rating_a)
        to_side = {"a": "left" if a_left else "right", "b": "right" if a_left else "left", "tie": "tie"}
        return render_template(
            "rate.html", token=token, rater=rater.name, item=item_id, instruction=item["instruction"],
            responses={"left": item["response_a"] if a_left else item["response_b"],
                       "right": item["response_b"] if a_left else item["response_a"]},
            checked={"left": left, "right": right, "preference": to_side.get(rating.preference)},
            labels=LABELS, position=position + 1, total=len(order), rated=rated, revising=rating.submitted,
            draft=not rating.submitted and item_id in ratings,
            flag=item["moderation_reason"] if item["moderation"] == "flag" else None,
            back=url_for("rate_page", token=token, item=order[position - 1]) if position > 0 else None)

    @app.post("/r/<token>/rate")
    def rate(token: str) -> Response:
        rater = rater_of(token)
        form = request.form
        item_id = form.get("item", "")
        if not item_id:
            raise RatingRefused(400, "the form names no item")
        if form.get("preference") and form["preference"] not in SIDES:
            raise RatingRefused(400, f"preference {shown(form['preference'])}: expected one of {list(SIDES)}")
        a_left = a_on_left(rater.seed, item_id)
        left, right = form.get("left") or None, form.get("right") or None
        preference = {"left": "a" if a_left else "b", "right": "b" if a_left else "a",
                      "tie": "tie"}.get(form.get("preference", ""))
        final = form.get("final") == "1"
        rating = Rating(left if a_left else right, right if a_left else left, preference, final)
        store.save(rater, item_id, a_left, rating, revise=form.get("revise") == "1")
        if final:
            return redirect(url_for("rate_page", token=token), code=303)
        return Response(status=204)

    return app


def logged(app: Flask, store: Store) -> Callable[..., Iterable[bytes]]:
    """`app` as a WSGI app that writes one access line per request: client, method, path with the token
    replaced by the rater's name, status, milliseconds."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started, status = time.monotonic(), []

        def start(code: str, headers: list, *exc_info: Any) -> Any:
            status.append(code.split(" ", 1)[0])
            return start_response(code, headers, *exc_info)

        try:
            return app(environ, start)
        finally:
            path = environ.get("PATH_INFO", "")
            match = re.match(r"/r/([^/]+)", path)
            if match:
                rater = store.rater(match[1])
                path = f"/r/[{rater.name if rater else 'unknown rater'}]{path[match.end():]}"
            access_log.info('%s "%s %s" %s %.0f ms', environ.get("REMOTE_ADDR", "-"), environ.get("REQUEST_METHOD"),
                            path, status[0] if status else "-", 1000 * (time.monotonic() - started))

    return application


class ServeClaim:
    """This process serves the study in `db`: an exclusive lock on `<db>.serving`, released when the process
    ends however it ends, holding the serving process's pid and address for the next one's error."""

    def __init__(self, db: Path) -> None:
        self.path = Path(f"{db}.serving")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 200).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise ValueError(f"{db} is being served already ({holder}); a second serve would change the "
                             "running study. Stop that one first, or start another study with --db NEW.sqlite")
        self.note("starting")

    def note(self, where: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()}, {where}".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)


@contextmanager
def claimed(db: Path) -> Iterator[ServeClaim]:
    claim = ServeClaim(db)
    try:
        yield claim
    finally:
        claim.release()


def bind(store: Store, host: str, port: int) -> Any:
    """A waitress server for the app, bound to (host, port) but not yet serving (port 0: a free one)."""
    import waitress

    try:
        return waitress.create_server(logged(create_app(store), store), host=host, port=port, threads=8,
                                      max_request_body_size=MAX_REQUEST_BYTES, ident="rt_lab.human")
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port} ({err.strerror or err}); nothing in the study changed") \
            from err


def port_of(server: Any) -> int:
    """The port a bound server listens on (the first one's, where a host name gave several addresses)."""
    return server.effective_port if hasattr(server, "effective_port") else server.effective_listen[0][1]


def serve_forever(server: Any) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM); every rating is committed before its reply."""
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
