"""Prompt templates of every stage, and the JSON schemas used for constrained decoding.

Templates use `{name}` slots filled by `fill` (plain replacement, so JSON examples need no brace escaping).
Changing a template changes cache keys: recorded transcripts must then be re-recorded.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BASIC_ANSWER",
    "DRIFT_PRIMER",
    "DRIFT_PRIMER_SCHEMA",
    "DRIFT_REDUCE",
    "EXTRACT_CONTINUE",
    "EXTRACT_GRAPH",
    "EXTRACT_LOOP_CHECK",
    "GLOBAL_MAP",
    "GLOBAL_MAP_SCHEMA",
    "GLOBAL_REDUCE",
    "LOCAL_ANSWER",
    "REFUSAL",
    "REPORT",
    "REPORT_RETRY_NOTE",
    "REPORT_SCHEMA",
    "SUMMARIZE",
    "SUMMARY_LABEL",
    "fill",
]


SUMMARY_LABEL = "Merged description:"  # the summary prompt's last line; a small model may echo it back


def fill(template: str, **values: Any) -> str:
    """Replace each `{name}` slot by its value."""
    out = template
    for name, value in values.items():
        out = out.replace("{" + name + "}", str(value))
    return out


EXTRACT_GRAPH = """-Goal-
Read the text below and list every entity of these types: [{entity_types}], and every relationship between them.

-Steps-
1. For each entity write: ("entity"{tuple_delimiter}<NAME IN CAPITALS>{tuple_delimiter}<type, one of {entity_types}>{tuple_delimiter}<one sentence about the entity from the text>)
2. For each pair of related entities write: ("relationship"{tuple_delimiter}<SOURCE NAME>{tuple_delimiter}<TARGET NAME>{tuple_delimiter}<how they are related>{tuple_delimiter}<strength from 1 to 10>)
3. Separate records with {record_delimiter}. Write {completion_delimiter} when you are done.

-Example-
Text: Ada Lovelace worked with Charles Babbage in London on the Analytical Engine.
Output:
("entity"{tuple_delimiter}ADA LOVELACE{tuple_delimiter}person{tuple_delimiter}Ada Lovelace worked on the Analytical Engine with Charles Babbage){record_delimiter}
("entity"{tuple_delimiter}CHARLES BABBAGE{tuple_delimiter}person{tuple_delimiter}Charles Babbage designed the Analytical Engine){record_delimiter}
("entity"{tuple_delimiter}LONDON{tuple_delimiter}geo{tuple_delimiter}London is where the work took place){record_delimiter}
("relationship"{tuple_delimiter}ADA LOVELACE{tuple_delimiter}CHARLES BABBAGE{tuple_delimiter}Ada Lovelace collaborated with Charles Babbage{tuple_delimiter}8){record_delimiter}
("relationship"{tuple_delimiter}CHARLES BABBAGE{tuple_delimiter}LONDON{tuple_delimiter}Charles Babbage worked in London{tuple_delimiter}4)
{completion_delimiter}

-Real data-
Text: {input_text}
Output:
"""

EXTRACT_CONTINUE = (
    "Some entities and relationships were missed in the last extraction. Add them below in the same format "
    "(only the new ones):\n"
)

EXTRACT_LOOP_CHECK = "Are there still entities or relationships that need to be added? Answer with one letter, Y or N.\nAnswer:"

SUMMARIZE = """You merge descriptions of the same {kind} into one.
Write a single, comprehensive description in the third person that keeps every fact and resolves contradictions.
Include the name so the description stands on its own.

{kind}: {name}
Descriptions:
{descriptions}

Merged description:"""

REPORT = """You are writing a report about one community of a knowledge graph: a group of entities and their relationships.
The report tells a decision-maker what the community is about and why it matters.

Return JSON with these fields:
- "title": a short specific name for the community, naming its key entities
- "summary": an executive summary of its structure and main relationships
- "rating": a number from 0 to 10 for how important the community is
- "rating_explanation": one sentence explaining the rating
- "findings": 2 to 5 objects with "summary" (a short insight) and "explanation" (a paragraph grounded in the data)
Use only facts from the data below. Cite records as [Data: Entities (ids); Relationships (ids)].

-Data-
{input_text}

JSON:"""

REPORT_RETRY_NOTE = (
    "\n(Your previous answer was not valid JSON. Answer with one JSON object only, no other text.)\nJSON:"
)

# Length bounds make every report end: a small model otherwise fills its whole budget repeating one sentence.
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 3, "maxLength": 80},
        "summary": {"type": "string", "minLength": 10, "maxLength": 400},
        "rating": {"type": "number", "minimum": 0, "maximum": 10},
        "rating_explanation": {"type": "string", "maxLength": 160},
        "findings": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "summary": {"type": "string", "minLength": 3, "maxLength": 100},
                    "explanation": {"type": "string", "maxLength": 300},
                },
                "required": ["summary", "explanation"],
            },
        },
    },
    "required": ["title", "summary", "rating", "rating_explanation", "findings"],
}

REFUSAL = "The indexed documents hold no information about this question."

LOCAL_ANSWER = """Answer the question using the data tables below about entities, relationships, sources and community reports.
If the data does not contain the answer, say so. Do not invent facts.
Support each statement with references like [Data: Entities (1, 2); Relationships (3); Sources (4); Reports (5)].

{context}

Question: {question}
Answer:"""

BASIC_ANSWER = """Answer the question using the source texts below. If they do not contain the answer, say so.
Support each statement with references like [Data: Sources (1, 2)].

{context}

Question: {question}
Answer:"""

GLOBAL_MAP = """You read part of a set of community reports and list the key points that help answer the question.
Return JSON: {"points": [{"description": "<one key point>", "score": <0-100, how much it helps answer>, "reports": [<ids of the reports it comes from>]}]}
If the reports contain nothing relevant, return {"points": []}.

-Reports-
{context}

Question: {question}
JSON:"""

# Each point must name the reports it comes from (the answer's citations); lengths are bounded so it ends.
GLOBAL_MAP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "points": {
            "type": "array",
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string", "minLength": 3, "maxLength": 300},
                    "score": {"type": "integer", "minimum": 0, "maximum": 100},
                    "reports": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 5},
                },
                "required": ["description", "score", "reports"],
            },
        }
    },
    "required": ["points"],
}

GLOBAL_REDUCE = """Analysts each read part of a dataset and reported key points, ranked by importance.
Combine them into one answer to the question. Keep the references ([Data: Reports (...)]) of the points you use.
If the points do not answer the question, say so.

-Analyst points-
{context}

Question: {question}
Answer:"""

DRIFT_PRIMER = """You plan an answer from high-level community reports.
Give a first answer to the question, then up to {n} follow-up questions that would find missing details in the data.
Return JSON: {"intermediate_answer": "<answer with [Data: Reports (ids)]>", "follow_up_queries": ["<a question about one entity of the reports>"], "score": <0-100 confidence>}

-Reports-
{context}

Question: {question}
JSON:"""

DRIFT_PRIMER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intermediate_answer": {"type": "string", "maxLength": 600},
        "follow_up_queries": {
            "type": "array",
            "maxItems": 3,
            "items": {"type": "string", "pattern": "^[^<>{}]{10,160}$"},
        },
        "score": {"type": "number", "minimum": 0, "maximum": 100},
    },
    "required": ["intermediate_answer", "follow_up_queries", "score"],
}

DRIFT_REDUCE = """Combine a first answer and the answers to follow-up questions into one final answer to the question.
Keep their references ([Data: ...]). Do not invent facts.

First answer:
{primer}

Follow-up answers:
{follow_ups}

Question: {question}
Answer:"""
