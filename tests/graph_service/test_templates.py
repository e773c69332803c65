"""Template loading and validation: Vitrage's version-3 format, errors with file,
line and reason, and a bad file never stopping the others from loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from graph_service.entity_graph import CATEGORY, TYPE
from graph_service.templates import TemplateError, load_templates, validate_text
from tests.graph_service.evaluator_helpers import BASIC, shipped, template


def edited(old: str, new: str, text: str = BASIC) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ------------------------------------------------------------------ good ones
def test_basic_template_model() -> None:
    t = template(BASIC)
    assert t.name == "basic" and t.description.startswith("a host alarm")
    assert set(t.entities) == {"host_alarm", "host", "instance"}
    alarm = t.entities["host_alarm"]
    assert alarm.category == "ALARM" and alarm.type == "zabbix"
    assert dict(alarm.props) == {TYPE: "zabbix", "name": "Host is unreachable"}
    assert t.entities["host"].category == "RESOURCE"
    [scenario] = t.scenarios
    [clause] = scenario.clauses
    assert clause.entities == ("host_alarm", "host", "instance")
    [action] = scenario.actions
    assert (action.kind, action.target, action.causing_alarm) == (
        "raise_alarm",
        "instance",
        "host_alarm",
    )
    assert (action.alarm_name, action.severity) == ("Instance affected", "critical")
    assert action.line == 17
    assert t.key == f"basic#{t.digest}"


def test_the_key_changes_with_the_text() -> None:
    a = template(BASIC)
    b = template(edited("severity: critical", "severity: warning"))
    assert a.name == b.name and a.key != b.key
    assert template(BASIC).key == a.key


def test_shipped_templates_load() -> None:
    templates = shipped()
    assert sorted(t.name for t in templates) == [
        "host_alarm_affects_instances",
        "instance_problem_not_caused_by_host",
        "network_outage_affects_instances",
    ]
    host = next(t for t in templates if t.name == "host_alarm_affects_instances")
    # get_param resolved from the parameter's default
    assert dict(host.entities["host_alarm"].props)["name"] == "Host is unreachable"
    kinds = sorted(a.kind for s in host.scenarios for a in s.actions)
    assert kinds == ["add_causal_relationship", "mark_down", "raise_alarm", "set_state"]
    not_case = next(t for t in templates if t.name == "instance_problem_not_caused_by_host")
    [clause] = not_case.scenarios[0].clauses
    assert [str(r) for r in clause.negative] == ["host_alarm [on] host"]


PARAMS = """\
metadata:
  version: 3
  name: params
  type: standard
parameters:
  alarm:
    description: the host alarm
    default: Host is unreachable
  severity:
    description: no default
entities:
  host_alarm:
    type: zabbix
    name: get_param(alarm)
  host:
    type: nova.host
scenarios:
  - condition: host_alarm [on] host
    actions:
      - mark_down:
          target: host
"""


def test_parameters_default_and_given() -> None:
    assert dict(template(PARAMS).entities["host_alarm"].props)["name"] == "Host is unreachable"
    given = template(PARAMS, alarm="Too many processes")
    assert dict(given.entities["host_alarm"].props)["name"] == "Too many processes"
    assert given.key != template(PARAMS).key


def test_regex_properties() -> None:
    t = template(edited("    name: Host is unreachable", "    name.regex: Host.*"))
    spec = t.entities["host_alarm"]
    assert dict(spec.props) == {TYPE: "zabbix"}
    [(key, pattern)] = spec.regexes
    assert key == "name" and pattern.pattern == "Host.*"


def test_category_only_entity() -> None:
    t = template(edited("    type: zabbix\n", "    category: alarm\n"))
    spec = t.entities["host_alarm"]
    assert spec.category == "ALARM" and spec.type is None
    assert dict(spec.props)[CATEGORY] == "ALARM"


# ---------------------------------------------------------------- bad ones
@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (edited("version: 3", "version: 2"), 2, "metadata.version must be 3"),
        (edited("type: standard", "type: definition"), 4, "metadata.type must be 'standard'"),
        (edited("  name: basic\n", ""), 2, "metadata.name must be a non-empty string"),
        (BASIC + "extra: 1\n", 22, "unknown section 'extra'"),
        (BASIC.split("scenarios:")[0], 1, "the scenarios section is missing"),
        (edited("type: nova.host", "type: nova.hots"), 11, "unknown type 'nova.hots'"),
        (edited("    type: nova.host\n", "    name: h\n"), 10, "needs a type or a category"),
        (
            edited("    type: zabbix\n", "    type: zabbix\n    category: RESOURCE\n"),
            9,
            "type 'zabbix' is not of category RESOURCE",
        ),
        (edited("name: Host is unreachable", "name.regex: 'Host(('"), 9, "bad regular expression"),
        (edited("host [contains] instance", "host [contains] vm"), 15, "unknown entity 'vm'"),
        (
            edited("host [contains] instance", "host [hosts] instance"),
            15,
            "unknown relationship label 'hosts'",
        ),
        (edited("AND host [contains]", "AND hst [contains]"), 15, "unknown entity 'hst'"),
        (
            edited(
                "condition: host_alarm [on] host AND host [contains] instance",
                "condition: not (host_alarm [on] host AND host [contains] instance)",
            ),
            15,
            "cannot be purely negative",
        ),
        (edited("host_alarm [on] host AND", "host_alarm [on] host AND ("), 15, "column"),
        (edited("      - raise_alarm:", "      - raise_alarms:"), 17, "unknown action type"),
        (edited("          alarm_name: Instance affected\n", ""), 17, "needs 'alarm_name'"),
        (edited("severity: critical", "severity: dreadful"), 20, "severity 'dreadful'"),
        (edited("          severity: critical\n", "          severty: critical\n"), 20, "severty"),
        (edited("target: instance", "target: vm"), 18, "unknown entity 'vm'"),
        (edited("target: instance", "target: host_alarm"), 18, "is a ALARM, not an RESOURCE"),
        (edited("causing_alarm: host_alarm", "causing_alarm: host"), 21, "not an ALARM"),
        (
            edited(
                "condition: host_alarm [on] host AND host [contains] instance",
                "condition: host_alarm [on] host AND (host [contains] instance OR host)",
            ),
            18,
            "must appear (not negated) in every 'or' branch",
        ),
        (
            edited(
                "      - raise_alarm:\n",
                "      - set_state:\n          target: instance\n"
                "          state: BROKEN\n      - raise_alarm:\n",
            ),
            19,
            "state 'BROKEN' is not a state of nova.instance",
        ),
        (
            edited(
                "      - raise_alarm:\n",
                "      - add_causal_relationship:\n          source: host_alarm\n"
                "          target: instance\n      - raise_alarm:\n",
            ),
            19,
            "add_causal_relationship.target: 'instance' is a RESOURCE, not an ALARM",
        ),
        (edited("  host:\n", "  host_alarm:\n"), 10, "duplicate key 'host_alarm'"),
        (
            edited("  host:\n    type: nova.host\n", "  host:\n  type: [nova.host\n"),
            12,
            "not valid YAML",
        ),
        (edited("name: Host is unreachable", "name: get_param(alarm)"), 9, "no such parameter"),
        (edited("  instance:\n", "  and:\n"), 12, "bad entity id 'and'"),
        (edited("    actions:\n", "    action:\n"), 16, "unknown key 'action'"),
    ],
)
def test_errors_have_file_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(TemplateError) as info:
        validate_text(text, "bad.yaml")
    err = info.value
    assert reason in err.reason, err.reason
    assert (err.file, err.line) == ("bad.yaml", line), err.reason
    assert str(err).startswith(f"bad.yaml:{line}: ")


def test_parameter_without_value_is_an_error_where_it_is_used() -> None:
    text = edited("name: get_param(alarm)", "name: get_param(severity)", PARAMS)
    with pytest.raises(TemplateError, match="no default and no value") as info:
        validate_text(text, "p.yaml")
    assert info.value.line == 14
    # ... and fine once a value is given
    assert validate_text(text, "p.yaml", params={"severity": "x"}).name == "params"


def test_a_value_for_an_undeclared_parameter_is_an_error() -> None:
    with pytest.raises(TemplateError, match="undeclared parameter 'nope'"):
        validate_text(PARAMS, "p.yaml", params={"nope": 1})


def test_not_a_mapping() -> None:
    with pytest.raises(TemplateError, match="a template must be a mapping") as info:
        validate_text("- 1\n- 2\n", "list.yaml")
    assert info.value.line == 1


# -------------------------------------------------------------- directories
def test_a_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    (tmp_path / "a_good.yaml").write_text(BASIC)
    (tmp_path / "b_bad.yaml").write_text(edited("version: 3", "version: 1"))
    (tmp_path / "c_good.yaml").write_text(edited("name: basic", "name: other"))
    (tmp_path / "d_same_name.yaml").write_text(edited("severity: critical", "severity: warning"))
    (tmp_path / "e_broken.yaml").write_text("metadata: [\n")
    (tmp_path / "notes.txt").write_text("not a template")
    templates, errors = load_templates(tmp_path)
    assert [t.name for t in templates] == ["basic", "other"]
    assert templates[0].file == str(tmp_path / "a_good.yaml")
    found = {(Path(e.file).name, e.line): e.reason for e in errors}
    assert set(found) == {("b_bad.yaml", 2), ("d_same_name.yaml", 3), ("e_broken.yaml", 2)}
    assert "metadata.version must be 3" in found[("b_bad.yaml", 2)]
    assert "duplicate template name 'basic'" in found[("d_same_name.yaml", 3)]
    assert "not valid YAML" in found[("e_broken.yaml", 2)]


def test_an_empty_directory_loads_nothing(tmp_path: Path) -> None:
    assert load_templates(tmp_path) == ([], [])
