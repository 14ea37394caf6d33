"""Human evaluation (rt_lab.human): the items of a study from a sweep laid out as real runs leave it, the ratings
database, the report against hand-computed tables (with the LLM judge's preferences written by rt_lab.compare
through the canned length judge on loopback: a paid API's model cannot run here), and the real server over
HTTP refusing bad input. The browser tests are in test_human_browser.py."""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3

import pytest

from human_server import ANSWERS, INSTRUCTIONS, HumanServer, make_sweep, request
from judge_server import judge_overrides
from rt_lab.human.assignment import a_on_left, rater_order
from rt_lab.human.moderation import Moderation, load_filter, moderate, regex_filter
from rt_lab.human.pairing import build_items, parse_pairs
from rt_lab.human.report import write_report
from rt_lab.human.store import Rating, RatingRefused
from rt_lab.human.study import open_study
from rt_lab.layout import SweepDir


@pytest.fixture
def sweep(tmp_path, compose):
    return make_sweep(tmp_path / "sweep", compose)


def test_pairs_match_runs_on_seed_and_items_on_instruction(sweep):
    items, notes = build_items(sweep, parse_pairs("rt:it,base:it"))
    assert len(items) == 9 and len({item.id for item in items}) == 9
    for item in items:
        seed = int(item.seed)
        method = item.method_a
        index = INSTRUCTIONS.index(item.instruction)
        assert (item.response_a, item.response_b) == (ANSWERS[method, seed][index], ANSWERS["it", seed][index])
        assert item.dir_b == {1: "1", 2: "3"}[seed]
    assert sorted({(item.pair, item.dir_a, item.dir_b) for item in items}) == \
        [("base:it", "4", "1"), ("rt:it", "0", "1"), ("rt:it", "2", "3")]
    assert notes == ["rt:it: smollm2_135m-rt-sample-seed3 (5) is unfinished"]
    # a sample: the same instructions in every run pair
    sampled, _ = build_items(sweep, parse_pairs("rt:it,base:it"), sample=2)
    per_pair = {}
    for item in sampled:
        per_pair.setdefault((item.dir_a, item.dir_b), set()).add(item.instruction)
    assert len(sampled) == 6 and len({frozenset(kept) for kept in per_pair.values()}) == 1


@pytest.mark.parametrize("spec,message", [("rt", "is not METHOD_A:METHOD_B"), ("rt:rt", "with itself"),
                                          ("rt:it,rt:it", "given twice"), ("rt:it:x", "is not METHOD_A")])
def test_a_bad_pairs_option_is_an_error(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_pairs(spec)


def test_an_unknown_method_or_an_unanswered_instruction_is_an_error_naming_it(sweep):
    with pytest.raises(ValueError, match=r"no run in .* has method sft \(its methods: \['base', 'it', 'rt'\]\)"):
        build_items(sweep, parse_pairs("sft:it"))
    outputs = sweep / "3" / "model_outputs.json"
    outputs.write_text(json.dumps(json.loads(outputs.read_text())[:2]))
    with pytest.raises(ValueError, match=r"2/model_outputs.json item 2: instruction 'How do I boil an egg\?' has "
                                         r"no output in the reference .*3/model_outputs.json"):
        build_items(sweep, parse_pairs("rt:it"))


def test_two_partners_for_one_run_name_the_match_option(sweep, compose):
    from helpers import write_run

    write_run(sweep, 9, compose, ["method=it", "trainer.seed=1", "data.max_length=64"],
              [{"instruction": i, "output": "x"} for i in INSTRUCTIONS])
    with pytest.raises(ValueError, match=r"2 runs qualify as its reference .* --match KEY,\.\.\. sets the keys"):
        build_items(sweep, parse_pairs("rt:it"))
    items, _ = build_items(sweep, parse_pairs("rt:it"), match=["trainer.seed", "data.max_length"])
    assert {(item.dir_a, item.dir_b) for item in items} == {("0", "1"), ("2", "3")}


def test_a_study_keeps_its_settings_items_and_raters(sweep):
    study = open_study(sweep, parse_pairs("rt:it"), raters="2")
    assert [rater.name for rater in study.store.raters()] == ["rater1", "rater2"]
    again = open_study(sweep, parse_pairs("rt:it"), raters="alice,bob")  # adds, keeps, same tokens
    assert [r.name for r in again.store.raters()] == ["rater1", "rater2", "alice", "bob"]
    assert again.store.raters()[0].token == study.store.raters()[0].token
    assert len(open_study(sweep, parse_pairs("rt:it"), raters="3").store.raters()) == 4  # none is dropped
    with pytest.raises(ValueError, match=r"'al ice' is not a rater name"):
        open_study(sweep, parse_pairs("rt:it"), raters="al ice")
    with pytest.raises(ValueError, match=r"ratings.sqlite is a study of .*'rt:it'.*; this serve asks for .*'base:it'"):
        open_study(sweep, parse_pairs("base:it"))
    outputs = sweep / "0" / "model_outputs.json"
    records = json.loads(outputs.read_text())
    records[1]["output"] = "A different haiku."
    outputs.write_text(json.dumps(records))
    with pytest.raises(ValueError, match=r"instruction 'Write a haiku about rain.'\): \['response_a'\] changed in "
                                         r"the sweep since rating began"):
        open_study(sweep, parse_pairs("rt:it"))


def test_each_rater_has_an_order_and_sides_of_their_own_stable_under_new_items():
    ids = [f"{n:016x}" for n in range(40)]
    first, second = rater_order(1, ids), rater_order(2, ids)
    assert sorted(first) == ids and first != second and first != ids
    grown = rater_order(1, ids + ["ffff000000000000"])
    assert [i for i in grown if i in ids] == first  # a new item takes its place without moving the others
    sides = [a_on_left(1, i) for i in ids]
    assert 10 < sum(sides) < 30 and sides != [a_on_left(2, i) for i in ids]


def test_moderation_filters():
    hide, flag = regex_filter(r"\bbomb\b", "hide"), regex_filter("egg", "flag")
    assert moderate([flag, hide], "How do I boil an egg?", ["a bomb"]) == \
        Moderation("hide", "a response matches /\\bbomb\\b/ ('bomb')")
    assert moderate([hide, flag], "How do I boil an EGG?", ["ok"]).action == "flag"
    assert moderate([hide, flag], "Hello", ["bombastic"]) is None
    with pytest.raises(ValueError, match=r"--hide '\(': not a regular expression"):
        regex_filter("(", "hide")
    with pytest.raises(ValueError, match="expected module:function"):
        load_filter("screen")
    with pytest.raises(ValueError, match="cannot import no_such_module"):
        load_filter("no_such_module:screen")
    with pytest.raises(ValueError, match="json has no callable screen"):
        load_filter("json:screen")
    with pytest.raises(TypeError, match=r"returned 'hide'; expected a rt_lab.human.Moderation"):
        moderate([lambda instruction, responses: "hide"], "x", ["y"])


def submit(store, rater, item, rating_a, rating_b, preference):
    store.save(rater, item.id, True, Rating(rating_a, rating_b, preference, True))


def test_report_tables_agreement_and_judge_agreement_by_hand(sweep, compose, length_judge):
    from rt_lab.compare import compare

    # the LLM judge's verdicts as the sweep comparison writes them; then rt's seed-2 egg answer changes, so its
    # verdict is stale (judged 5 of the 6 items)
    compare(sweep, compose([*judge_overrides(length_judge), "judge.protocol=rt_lab", "logger=none"]))
    outputs = sweep / "2" / "model_outputs.json"
    records = json.loads(outputs.read_text())
    records[2]["output"] = "Boil it well."
    outputs.write_text(json.dumps(records))
    study = open_study(sweep, parse_pairs("rt:it"), raters="r1,r2,r3,r4")
    store = study.store
    r1, r2, r3, r4 = store.raters()
    items = sorted(study.items, key=lambda item: (item.seed, INSTRUCTIONS.index(item.instruction)))
    for number, item in enumerate(items):
        submit(store, r1, item, "excellent", "sufficient", "a")
        submit(store, r2, item, "excellent", "not_acceptable", "a")
        submit(store, r3, item, "sufficient", "sufficient", "a" if number < 4 else "b")
    store.save(r4, items[0].id, False, Rating("excellent", None, None, False))  # a draft: not counted
    text = write_report(sweep)
    layout = SweepDir(sweep)

    def table(path):
        with path.open() as handle:
            return list(csv.DictReader(handle))

    # Table 11: 18 ratings per method. rt: 12 excellent, 6 sufficient; it: 12 sufficient, 6 not acceptable
    rows = {row["method"]: row for row in table(layout.human_acceptability_csv)}
    assert [(rows[m]["ratings"], rows[m]["seeds"]) for m in ("rt", "it")] == [("18", "2"), ("18", "2")]
    columns = ("excellent", "sufficient", "acceptable", "not_acceptable")
    assert [float(rows["rt"][k]) for k in columns] == pytest.approx([200 / 3, 100 / 3, 100, 0])
    assert [float(rows["it"][k]) for k in columns] == pytest.approx([0, 200 / 3, 200 / 3, 100 / 3])
    # Fig. 8: 16 of 18 ratings prefer rt, 2 prefer it
    (preference,) = table(layout.human_preferences_csv)
    assert (preference["method_a"], preference["method_b"], preference["items"], preference["ratings"]) == \
        ("rt", "it", "6", "18")
    assert [float(preference[k]) for k in ("a_wins", "ties", "b_wins")] == pytest.approx([800 / 9, 0, 100 / 9])
    # agreement, by hand (see test_human_agreement for the formulas):
    # preference: items 1-4 [a,a,a], 5-6 [a,a,b]: coincidences o_aa 14, o_ab = o_ba = 2, n_a 16, n_b 2, n 18:
    #   alpha = 1 - 17 * 4 / (2 * 16 * 2) = -1/16; Fleiss: P-bar 7/9, P-bar-e 65/81, kappa = -1/8.
    # acceptability (ordinal, not < sufficient < excellent), per item the rt unit [E,E,S] and the it unit
    #   [S,N,S]: o_EE 6, o_ES = o_SE 6, o_SS 6, o_SN = o_NS 6; n_E 12, n_S 18, n_N 6, n 36; squared ordinal
    #   distances E-S 15^2, S-N 12^2, E-N 27^2: alpha = 1 - 35 * 4428 / 233280 = 145/432;
    #   Fleiss: P-bar 1/3, shares 1/3, 1/2, 1/6, P-bar-e 7/18, kappa = -1/11.
    agreement = {row["judgment"]: row for row in table(layout.human_agreement_csv)}
    assert {k: (row["raters"], row["alpha_metric"], row["fleiss_units"]) for k, row in agreement.items()} == \
        {"preference": ("3", "nominal", "6"), "acceptability": ("3", "ordinal", "12")}
    assert [float(agreement[k][s]) for k in ("preference", "acceptability")
            for s in ("krippendorff_alpha", "fleiss_kappa")] == pytest.approx([-1 / 16, -1 / 8, 145 / 432, -1 / 11])
    # the judge (longer wins, P = 0.7) prefers rt on items 1-4 and it on item 5; item 6 is stale. Most raters
    # prefer rt everywhere: 4 of 5 agree. A rater agrees with the others' majority 12 times on items 1-4 and
    # disagrees twice (r3 on items 5-6; r1 and r2 there face a 1-1 split). Win rates of rt on items 1-5:
    # judge (4 * 70 + 30) / 5 = 62; raters (12 + 2) / 15.
    (judged,) = table(layout.human_judge_agreement_csv)
    assert (judged["items"], judged["judged"], judged["stale"], judged["agreement_items"]) == ("6", "5", "1", "5")
    assert judged["judge_files"] == "0/comparison/vs_smollm2_135m-it-sample-seed1.json " \
                                    "2/comparison/vs_smollm2_135m-it-sample-seed2.json"
    assert [float(judged[k]) for k in ("judge_agrees_with_majority", "rater_agrees_with_others",
                                       "judge_win_rate_a", "human_win_rate_a")] == \
        pytest.approx([80.0, 1200 / 14, 62.0, 1400 / 15])
    # the export: every submitted rating, none of the draft
    exported = table(layout.human_ratings_csv)
    assert len(exported) == 18 and {row["rater"] for row in exported} == {"r1", "r2", "r3"}
    png = layout.human_preferences_plot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert layout.human_report_md.read_text() == text
    assert "| smollm2_135m | sample | - | rt:it | rt | 2 | 18 | 66.7 | 33.3 | 100.0 | 0.0 |" in text
    assert "Raters: r1 6/6, r2 6/6, r3 6/6, r4 0/6" in text


def test_report_without_a_study_or_ratings_says_so(sweep):
    with pytest.raises(FileNotFoundError, match=r"ratings.sqlite: no ratings database; start the study with"):
        write_report(sweep)
    open_study(sweep, parse_pairs("rt:it"))
    with pytest.raises(ValueError, match="no submitted ratings yet"):
        write_report(sweep)


def form(page: str) -> dict[str, str]:
    """The hidden fields of the rating form on a page."""
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))


def test_the_server_refuses_bad_input_and_keeps_every_rating_once(sweep, tmp_path, monkeypatch):
    screen = tmp_path / "screen.py"  # a moderation callable, as a user would write one
    screen.write_text("from rt_lab.human import Moderation\n\n"
                      "def screen(instruction, responses):\n"
                      "    return Moderation('flag', 'mentions rain') if 'rain' in instruction else None\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    server = HumanServer(sweep, ["--pairs", "rt:it", "--raters", "alice,bob", "--hide", "prime number",
                                 "--moderation", "screen:screen"], tmp_path / "server.log")
    try:
        assert "6 items (2 hidden, 2 flagged by moderation)" in "".join(server.output)
        assert any("rt:it: " in line and "(5) is unfinished" in line for line in server.output)
        alice = server.raters["alice"]
        token = alice.rsplit("/", 1)[1]
        rate = f"{alice}/rate"
        db = sqlite3.connect(SweepDir(sweep).human_ratings)
        hidden = [row[0] for row in db.execute("SELECT id FROM items WHERE moderation = 'hide'")]
        (seed,) = db.execute("SELECT seed FROM raters WHERE name = 'alice'").fetchone()

        # unknown raters, items and values
        status, _, page = request(server.url + "r/not-a-token")
        assert status == 404 and "This rater link is not known" in page
        assert request(server.url + "r/not-a-token/rate", {"item": "x", "final": "1"})[0] == 404
        status, _, page = request(server.url)
        assert status == 200 and token not in page  # the index lists no rater
        status, _, page = request(alice)
        assert status == 200 and "0 of 4 rated" in page
        fields = form(page)
        item = fields["item"]
        full = {"item": item, "left": "excellent", "right": "sufficient", "preference": "left", "final": "1",
                "revise": "0"}
        for tampered, code, message in [({"item": "0123456789abcdef"}, 404, "no item &#39;0123456789abcdef&#39;"),
                                        ({"item": hidden[0]}, 404, "no item"),
                                        ({"item": ""}, 400, "names no item"),
                                        ({"left": "great"}, 400, "rating &#39;great&#39;"),
                                        ({"preference": "a"}, 400, "preference &#39;a&#39;"),
                                        ({"right": ""}, 400, "rate both responses")]:
            status, _, page = request(rate, {**full, **tampered})
            assert (status, message in page) == (code, True), (tampered, status, page[-500:])
        assert request(f"{alice}?item={hidden[0]}")[0] == 404
        assert db.execute("SELECT COUNT(*) FROM ratings").fetchone() == (0,)

        # blinding: the page names no method, run or run dir; the server's side order is the rater's own
        (row,) = db.execute("SELECT * FROM items WHERE id = ?", (item,)).fetchall()
        names = dict(zip([d[0] for d in db.execute("SELECT * FROM items").description], row))
        status, _, page = request(alice)
        for secret in (names["run_a"], names["run_b"], names["pair"], "seed"):
            assert secret not in page
        left, right = (names["response_a"], names["response_b"])[::1 if a_on_left(seed, item) else -1]
        assert page.index(left.replace("'", "&#39;")) < page.index(right.replace("'", "&#39;"))

        # a draft comes back on reload; a draft cannot touch a submitted rating
        assert request(rate, {"item": item, "left": "not_acceptable", "final": "0"})[0] == 204
        page = request(alice)[2]
        assert form(page)["item"] == item and re.search(r'value="not_acceptable" required\s+checked', page)
        assert "Draft restored." in page
        # submitted twice (a double click, a resent form): one rating; a different one only as a revision
        for _ in range(2):
            status, headers, _ = request(rate, full)
            assert (status, headers["Location"]) == (303, f"/r/{token}")
        status, _, page = request(rate, {**full, "preference": "tie"})
        assert status == 409 and "already rated by alice" in page
        assert request(rate, {**full, "left": "excellent", "final": "0"})[0] == 409
        assert request(rate, {**full, "preference": "tie", "revise": "1"})[0] == 303
        stored = db.execute("SELECT rating_a, rating_b, preference, revisions, submitted_at IS NOT NULL FROM "
                            "ratings WHERE rater = 'alice'").fetchall()
        in_a = a_on_left(seed, item)
        assert stored == [("excellent" if in_a else "sufficient", "sufficient" if in_a else "excellent", "tie", 1,
                           1)]
        # the next screen is alice's second item; flagged items carry the warning
        page = request(alice)[2]
        second = form(page)["item"]
        visible = [i for (i,) in db.execute("SELECT id FROM items WHERE moderation IS NOT 'hide' ORDER BY position")]
        assert second == rater_order(seed, visible)[1] and "1 of 4 rated" in page
        flagged = {i for (i,) in db.execute("SELECT id FROM items WHERE moderation = 'flag'")}
        for item_id in visible:
            page = request(f"{alice}?item={item_id}")[2]
            assert ("Content warning: this item was flagged (mentions rain)" in page) == (item_id in flagged)
    finally:
        server.close()


def test_store_save_refusals_carry_their_http_status(sweep):
    study = open_study(sweep, parse_pairs("rt:it"), raters="1")
    (rater,) = study.store.raters()
    with pytest.raises(RatingRefused) as refused:
        study.store.save(rater, study.items[0].id, True, Rating("excellent", "good", "a", True))
    assert refused.value.status == 400 and "rating 'good'" in str(refused.value)
