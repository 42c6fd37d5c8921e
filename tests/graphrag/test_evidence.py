"""Global search's stand-in points: the communities' source sentences closest to the question, cited by report."""

from __future__ import annotations

from xpullm.graphrag.evidence import community_evidence

# Two articles of tests/graphrag/data/articles, one text unit each, and two communities over them.
DAM = (
    "The Brannock Dam was completed in 1931 on the Ellis River. Engineer Hana Morrow designed the dam for the "
    "Brannock Water Board. The dam supplies electricity to the town of Kestrel Falls."
)
LIBRARY = (
    "The Kestrel Falls Library holds the papers of Hana Morrow, including her drawings of the Brannock Dam. "
    "Librarian Priya Nair organised an exhibition about the dam in 2021."
)
UNITS = [
    {"id": "u-dam", "human_readable_id": 0, "text": DAM},
    {"id": "u-lib", "human_readable_id": 1, "text": LIBRARY},
]
ENTITIES = [
    {"id": "e1", "title": "BRANNOCK DAM"},
    {"id": "e2", "title": "HANA MORROW"},
    {"id": "e3", "title": "KESTREL FALLS LIBRARY"},
    {"id": "e4", "title": "PRIYA NAIR"},
]
COMMUNITIES = [
    {"community": 0, "entity_ids": ["e1", "e2"], "text_unit_ids": ["u-dam", "u-lib"]},
    {"community": 1, "entity_ids": ["e3", "e4"], "text_unit_ids": ["u-lib"]},
]
REPORTS = [{"community": 0, "rank": 2.0}, {"community": 1, "rank": 5.0}]


def test_sentences_closest_to_the_question_are_cited_with_the_communities_that_name_them(embedder) -> None:
    found = community_evidence(
        "Where are Hana Morrow's drawings of the Brannock Dam kept?",
        REPORTS, COMMUNITIES, ENTITIES, UNITS, embedder, top_k=2, min_score=0.3,
    )  # fmt: skip
    # On the indexed articles the cosine alone put "Engineer Hana Morrow designed ..." first; the shared words fix it.
    assert [e.sentence for e in found] == [
        "The Kestrel Falls Library holds the papers of Hana Morrow, including her drawings of the Brannock Dam.",
        "Engineer Hana Morrow designed the dam for the Brannock Water Board.",
    ]
    assert found[0].reports == (1, 0)  # both communities name it; the higher-ranked report first
    assert found[1].reports == (0,)  # only community 0's entities occur in it
    assert found[0].score > found[1].score
    # Nothing close enough: no stand-in points (the query then refuses).
    assert (
        community_evidence(
            "How do I bake sourdough bread?",
            REPORTS,
            COMMUNITIES,
            ENTITIES,
            UNITS,
            embedder,
            top_k=2,
            min_score=0.3,
        )
        == []
    )
