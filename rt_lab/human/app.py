"""The rating web app (Flask): a rater opens `/r/<token>` and sees one instruction and two blinded responses in
the rater's own order, rates each (Acceptable: Excellent / Acceptable: Sufficient / Not acceptable) and picks the
more helpful one or a tie; keyboard shortcuts, progress, drafts and resuming are in the page. The page speaks of
"Response 1" and "Response 2" only: which method is which is drawn per rater and item on the server and never
sent."""

from __future__ import annotations

from typing import Callable

from flask import Flask, Response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.serving import make_server

from rt_lab.human.assignment import a_on_left, rater_order
from rt_lab.human.store import Rater, Rating, RatingRefused, Store

LABELS = (("excellent", "Acceptable: Excellent"), ("sufficient", "Acceptable: Sufficient"),
          ("not_acceptable", "Not acceptable"))
SIDES = ("left", "right", "tie")  # what the form says; the server turns it into a / b / tie


def create_app(store: Store) -> Flask:
    app = Flask(__name__)

    def rater_of(token: str) -> Rater:
        rater = store.rater(token)
        if rater is None:
            raise NotFound("This rater link is not known. Use the link you were given.")
        return rater

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
            raise NotFound(f"There is no item {item_id!r} in this study.")
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
            raise RatingRefused(400, f"preference {form['preference']!r}: expected one of {list(SIDES)}")
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


def serve(store: Store, host: str, port: int, ready: Callable[[int], None]) -> None:
    """Serve the app until interrupted; `ready(port)` is called once it listens (port 0: a free one)."""
    server = make_server(host, port, create_app(store), threaded=True)
    ready(server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
