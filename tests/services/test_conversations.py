"""kb.services.conversations: claiming, stopping and regenerating answers."""

import pytest

from kb.models import Message
from kb.services.conversations import message_answer_start, message_ask, message_regenerate, message_stop
from tests.corpus import BACKUPS
from tests.factories import add_document, ask, make_collection, make_user

pytestmark = pytest.mark.django_db


def test_answer_start_reads_and_claims_a_pending_message_and_reads_nothing_for_one_being_written(
    django_assert_num_queries,
):
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    message, _ = message_ask(user=user, question="When does the backup run?", collections=[collection])

    sources, history, claimed = message_answer_start(user=user, message=message)
    assert claimed and message.status == Message.Status.STREAMING
    assert sources and {s["document_id"] for s in sources} == {collection.documents.get().pk} and history == []

    # A second reader (another tab, another web process) only follows the relay: its
    # sources and history are the writer's business.
    with django_assert_num_queries(0):
        assert message_answer_start(user=user, message=message) == ([], [], False)


def test_only_the_asker_can_stop_an_answer():
    user, message = ask()
    with pytest.raises(PermissionError):
        message_stop(user=make_user(), message=message)
    message.refresh_from_db()
    assert message.status == Message.Status.PENDING
    assert message_stop(user=user, message=message).status == Message.Status.INCOMPLETE


def test_only_the_asker_can_have_a_question_answered_again():
    user, message = ask()
    message_stop(user=user, message=message)
    with pytest.raises(PermissionError):
        message_regenerate(user=make_user(is_staff=True), message=message)
    assert message_regenerate(user=user, message=message).status == Message.Status.PENDING


def test_a_question_goes_only_into_its_owner_s_conversation():
    user, message = ask()
    stranger = make_user()
    with pytest.raises(PermissionError):
        message_ask(user=stranger, question="And the restore?", collections=[], conversation=message.conversation)
