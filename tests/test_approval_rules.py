"""The approval rules as pure functions: who may decide, and when an approval is complete.

No Redis and no store: :func:`bot.approval_rules.decide` takes the approval record, the actor, the
policy and the requester, and returns the new decisions and state, or refuses with a reason.
Hypothesis drives random sequences of decisions to check the properties the safety model promises.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.approval_rules import DecisionResult, check_allowed, decide
from bot.config import ApprovalConfig
from bot.errors import AlreadyDecided, ApprovalError, NotAllowed
from bot.identity import Actor
from bot.incidents import Approval, ApprovalState, Decision

AT = "2025-01-01T00:00:00Z"


def approval(required: int = 1, decisions: list[Decision] | None = None, state: str = "pending") -> Approval:
    return Approval(
        id=1,
        incident_id=1,
        step_run_id=1,
        step_id="flush",
        step_index=0,
        step_type="redis.flushdb",
        plan={},
        plan_hash="h",
        state=ApprovalState(state),
        required=required,
        decisions=decisions or [],
    )


def cli(account: str, display: str | None = None) -> Actor:
    return Actor(kind="cli", id=account, display=display)


def slack(user: str) -> Actor:
    return Actor(kind="slack", id=user)


def policy(*accounts: str, self_ok: bool = False) -> ApprovalConfig:
    return ApprovalConfig(cli_approvers=list(accounts), allow_self_approval=self_ok)


def then(ap: Approval, result: DecisionResult) -> Approval:
    """The record as the store writes it after ``result``."""
    return ap.model_copy(update={"decisions": list(result.decisions), "state": result.state})


# -- quorum and deny ------------------------------------------------------------------------------


def test_one_approval_completes_a_one_approver_step() -> None:
    r = decide(approval(1), slack("UA"), True, policy(), requested_by=None, at=AT)
    assert r.state == ApprovalState.APPROVED and r.complete and r.needed == 0
    assert r.decisions == (Decision(who="slack:UA", at=AT, approve=True, identity="slack:UA"),)
    assert r.decided_by == "slack:UA" and r.approver_ids == ["slack:UA"]


def test_two_approver_step_waits_for_a_second_person() -> None:
    ap = approval(2)
    first = decide(ap, slack("UA"), True, policy(), requested_by=None, at=AT)
    assert first.state == ApprovalState.PENDING and first.needed == 1 and not first.complete
    second = decide(then(ap, first), slack("UB"), True, policy(), requested_by=None, at=AT)
    assert second.state == ApprovalState.APPROVED and second.needed == 0
    assert second.decided_by == "slack:UA, slack:UB"


def test_a_deny_completes_at_once_even_after_approvals() -> None:
    ap = approval(2)
    first = decide(ap, slack("UA"), True, policy(), requested_by=None, at=AT)
    denied = decide(then(ap, first), slack("UB"), False, policy(), requested_by=None, at=AT)
    assert denied.state == ApprovalState.DENIED and denied.complete and denied.decided_by == "slack:UB"


def test_an_approver_may_change_their_mind_and_deny() -> None:
    ap = approval(2)
    first = decide(ap, slack("UA"), True, policy(), requested_by=None, at=AT)
    assert decide(then(ap, first), slack("UA"), False, policy(), requested_by=None, at=AT).state == "denied"


@pytest.mark.parametrize("state", ["approved", "executing", "executed", "denied", "expired", "cancelled"])
def test_a_closed_approval_cannot_be_decided(state: str) -> None:
    ap = approval(1, state=state).model_copy(update={"decided_by": "slack:UA"})
    with pytest.raises(AlreadyDecided, match=f"already {state} by slack:UA"):
        decide(ap, slack("UB"), True, policy(), requested_by=None, at=AT)


def test_required_below_one_still_needs_one_approver() -> None:
    r = decide(approval(0), slack("UA"), False, policy(), requested_by=None, at=AT)
    assert r.state == ApprovalState.DENIED
    assert decide(approval(0), slack("UA"), True, policy(), requested_by=None, at=AT).needed == 0


# -- one identity counts once ---------------------------------------------------------------------


def test_the_same_identity_never_counts_twice() -> None:
    ap = approval(2)
    first = decide(ap, slack("UA"), True, policy(), requested_by=None, at=AT)
    with pytest.raises(
        ApprovalError, match="slack:UA already approved; this step needs 2 different approvers"
    ):
        decide(then(ap, first), slack("UA"), True, policy(), requested_by=None, at=AT)


def test_a_display_name_is_not_a_second_person() -> None:
    ap = approval(2)
    first = decide(ap, cli("alice", "alice"), True, policy("alice"), requested_by=None, at=AT)
    assert first.decisions[0].who == 'cli:alice (as "alice")' and first.decisions[0].identity == "cli:alice"
    with pytest.raises(ApprovalError, match="a display name does not make another person"):
        decide(then(ap, first), cli("alice", "bob"), True, policy("alice"), requested_by=None, at=AT)


def test_cli_and_slack_ids_are_different_identities() -> None:
    """``cli:UA`` and ``slack:UA`` are two identities: kind is part of who someone is."""
    ap = approval(2)
    first = decide(ap, slack("UA"), True, policy("UA"), requested_by=None, at=AT)
    second = decide(then(ap, first), cli("UA"), True, policy("UA"), requested_by=None, at=AT)
    assert second.approver_ids == ["slack:UA", "cli:UA"]


def test_legacy_decisions_without_identity_count_by_who() -> None:
    """Records from before identities (``who`` only) still block a second approval by the same string."""
    ap = approval(2, [Decision(who="slack:UA", at=AT, approve=True)])
    assert ap.approver_ids == ["slack:UA"]
    with pytest.raises(ApprovalError, match="already approved"):
        decide(ap, slack("UA"), True, policy(), requested_by=None, at=AT)


# -- requester ------------------------------------------------------------------------------------


def test_the_requester_cannot_approve_their_own_action() -> None:
    with pytest.raises(NotAllowed, match=r"slack:UA asked for this action.*allow_self_approval: true"):
        decide(approval(1), slack("UA"), True, policy(), requested_by="slack:UA", at=AT)


def test_the_requester_may_deny_their_own_action() -> None:
    r = decide(approval(1), slack("UA"), False, policy(), requested_by="slack:UA", at=AT)
    assert r.state == ApprovalState.DENIED


def test_allow_self_approval_permits_it() -> None:
    r = decide(approval(1), cli("alice"), True, policy(self_ok=True), requested_by="cli:alice", at=AT)
    assert r.state == ApprovalState.APPROVED


def test_a_self_approver_is_still_one_person_of_two() -> None:
    ap = approval(2)
    pol = policy("alice", "bob", self_ok=True)
    first = decide(ap, cli("alice"), True, pol, requested_by="cli:alice", at=AT)
    assert first.state == ApprovalState.PENDING
    with pytest.raises(ApprovalError, match="already approved"):
        decide(then(ap, first), cli("alice", "Alice Again"), True, pol, requested_by="cli:alice", at=AT)
    second = decide(then(ap, first), cli("bob"), True, pol, requested_by="cli:alice", at=AT)
    assert second.state == ApprovalState.APPROVED


def test_the_requester_is_matched_by_identity_not_display() -> None:
    with pytest.raises(NotAllowed, match="asked for this action"):
        decide(approval(1), cli("alice", "Someone Else"), True, policy(), requested_by="cli:alice", at=AT)
    assert decide(approval(1), cli("bob"), True, policy(), requested_by="cli:alice", at=AT).complete


# -- command-line approvers -----------------------------------------------------------------------


def test_empty_cli_approvers_means_any_account_for_a_one_approver_step() -> None:
    assert decide(approval(1), cli("anyone"), True, policy(), requested_by=None, at=AT).complete


def test_empty_cli_approvers_cannot_count_towards_a_two_person_step() -> None:
    with pytest.raises(NotAllowed, match=r"needs 2 different approvers.*cli_approvers is empty"):
        decide(approval(2), cli("alice"), True, policy(), requested_by=None, at=AT)


def test_empty_cli_approvers_still_lets_a_local_account_deny() -> None:
    assert decide(approval(2), cli("alice"), False, policy(), requested_by=None, at=AT).state == "denied"


def test_listed_cli_approvers_only() -> None:
    pol = policy("alice", "bob")
    assert decide(approval(1), cli("bob"), True, pol, requested_by=None, at=AT).complete
    for approve in (True, False):
        with pytest.raises(NotAllowed, match=r"'mallory' is not in approvals.cli_approvers \(alice, bob\)"):
            decide(approval(1), cli("mallory"), approve, pol, requested_by=None, at=AT)


def test_cli_approvers_do_not_restrict_slack() -> None:
    """Slack users are checked against ``slack.approvers`` by the chat layer, not against OS accounts."""
    assert decide(approval(2), slack("UA"), True, policy("alice"), requested_by=None, at=AT).needed == 1


def test_a_long_cli_approvers_list_is_shortened_in_the_message() -> None:
    pol = policy(*(f"u{i}" for i in range(8)))
    with pytest.raises(NotAllowed, match=r"\(u0, u1, u2, u3, u4, \.\.\.\)"):
        check_allowed(cli("x"), True, required=1, requested_by=None, policy=pol)


def test_the_record_given_is_never_modified() -> None:
    ap = approval(2)
    before = ap.model_dump()
    decide(ap, slack("UA"), True, policy(), requested_by=None, at=AT)
    with pytest.raises(NotAllowed):
        decide(ap, cli("x"), True, policy(), requested_by=None, at=AT)
    assert ap.model_dump() == before


# -- properties -----------------------------------------------------------------------------------

IDS = ["alice", "bob", "carol", "UA", "UB"]
DISPLAYS = st.one_of(st.none(), st.sampled_from(["Alice", "Bob Smith", "carol", "Zoë K", "x"]))
ACTORS = st.builds(Actor, kind=st.sampled_from(["cli", "slack"]), id=st.sampled_from(IDS), display=DISPLAYS)
POLICIES = st.builds(
    ApprovalConfig,
    cli_approvers=st.lists(st.sampled_from(IDS), unique=True, max_size=3),
    allow_self_approval=st.booleans(),
)
REQUESTERS = st.one_of(st.none(), st.sampled_from([f"{k}:{i}" for k in ("cli", "slack") for i in IDS]))


@dataclass
class Run:
    """A sequence of decisions applied as the store applies them, refusals included."""

    final: Approval
    accepted: list[tuple[Actor, bool]]
    completions: int


def play(ap: Approval, steps: list[tuple[Actor, bool]], pol: ApprovalConfig, requester: str | None) -> Run:
    accepted: list[tuple[Actor, bool]] = []
    completions = 0
    for actor, approve in steps:
        before = len(ap.decisions)
        try:
            result = decide(ap, actor, approve, pol, requested_by=requester, at=AT)
        except ApprovalError:
            continue
        assert len(result.decisions) == before + 1, "an accepted decision adds exactly one record"
        assert result.needed == max(0, max(1, ap.required) - len(result.approver_ids))
        if not approve:
            assert result.state == ApprovalState.DENIED, "a deny completes at once"
        completions += result.complete
        accepted.append((actor, approve))
        ap = then(ap, result)
    return Run(ap, accepted, completions)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["cli", "slack"]),
    account=st.sampled_from(IDS),
    steps=st.lists(st.tuples(DISPLAYS, st.booleans()), max_size=12),
    pol=POLICIES,
    requester=REQUESTERS,
)
def test_no_sequence_of_decisions_by_one_identity_reaches_a_quorum_of_two(
    kind: str, account: str, steps: list[tuple[str | None, bool]], pol: ApprovalConfig, requester: str | None
) -> None:
    actors = [(Actor(kind=kind, id=account, display=d), approve) for d, approve in steps]  # type: ignore[arg-type]
    run = play(approval(2), actors, pol, requester)
    assert run.final.state != ApprovalState.APPROVED
    assert len(run.final.approver_ids) <= 1


@settings(max_examples=300, deadline=None)
@given(
    required=st.integers(min_value=1, max_value=3),
    steps=st.lists(st.tuples(ACTORS, st.booleans()), max_size=15),
    pol=POLICIES,
    requester=REQUESTERS,
)
def test_an_approval_completes_once_and_only_by_allowed_distinct_people(
    required: int,
    steps: list[tuple[Actor, bool]],
    pol: ApprovalConfig,
    requester: str | None,
) -> None:
    run = play(approval(required), steps, pol, requester)
    assert run.completions <= 1, "exactly one decision completes an approval"
    final = run.final
    if final.state == ApprovalState.APPROVED:
        assert len(final.approver_ids) == required, "complete exactly at the quorum"
        assert all(d.approve for d in final.decisions)
    for actor, approve in run.accepted:
        if not approve:
            continue
        assert pol.allow_self_approval or actor.key != requester, "the requester never approves alone"
        if actor.kind == "cli":
            assert actor.id in pol.cli_approvers or (not pol.cli_approvers and required == 1)
    if final.state == ApprovalState.PENDING:
        assert len(final.approver_ids) < required
