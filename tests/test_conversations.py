"""Conversations: follow-ups made standalone, bounded history, regenerate and feedback."""

from __future__ import annotations

import pytest
from django.urls import reverse

from kb import answering, selectors
from kb.access import system_user
from kb.models import Feedback, Message
from kb.services.collections import collection_revoke
from kb.services.conversations import feedback_give, message_ask, message_claim, message_finish, message_regenerate
from tests.corpus import BACKUPS
from tests.factories import add_document, ask, make_collection, make_user
from tests.helpers import free_port, read_stream

pytestmark = pytest.mark.django_db

DEPLOYS = """# Deployments

## Releases

A release goes out every Tuesday after the change review. The release manager tags the
build and the pipeline rolls it out to the web servers one at a time.
"""


def answered(message: Message, answer: str = "Backups run nightly at 02:00 [1].") -> Message:
    message_claim(message=message)
    return message_finish(message=message, answer=answer, status=Message.Status.COMPLETE)


@pytest.fixture
def two_topics():
    user = make_user()
    collection = make_collection(viewer=[user])
    add_document(collection, "backups.md", BACKUPS)
    add_document(collection, "deploys.md", DEPLOYS)
    return user, collection


def test_a_follow_up_is_searched_together_with_the_earlier_question(two_topics):
    user, collection = two_topics
    first, _ = message_ask(
        user=user, question="Where are the database backups described?", collections=[collection]
    )
    answered(first)
    follow_up, _ = message_ask(
        user=user, question="How many copies are kept?", collections=[collection], conversation=first.conversation
    )
    assert follow_up.search_query == "Where are the database backups described? How many copies are kept?"
    assert follow_up.question == "How many copies are kept?"
    assert follow_up.sources[0]["source"] == "backups.md"
    assert "fourteen copies" in follow_up.sources[0]["text"]


def test_a_first_question_is_searched_as_asked(two_topics):
    user, collection = two_topics
    message, _ = message_ask(user=user, question="When do releases go out?", collections=[collection])
    assert message.search_query == "When do releases go out?"
    assert message.sources[0]["source"] == "deploys.md"


def test_model_rewrite_falls_back_to_history_when_the_model_server_is_down(two_topics, settings):
    settings.KB_FOLLOWUP_REWRITE = "model"
    settings.KB_LLM_URL = f"http://127.0.0.1:{free_port()}"
    user, collection = two_topics
    first, _ = message_ask(user=user, question="How are backups made?", collections=[collection])
    answered(first)
    follow_up, _ = message_ask(
        user=user, question="And how often?", collections=[collection], conversation=first.conversation
    )
    assert follow_up.search_query == "How are backups made? And how often?"


def test_model_rewrite_with_the_real_model_gives_one_standalone_line(two_topics, settings, model_server):
    settings.KB_FOLLOWUP_REWRITE = "model"
    user, collection = two_topics
    first, _ = message_ask(user=user, question="How are database backups made?", collections=[collection])
    answered(first)
    history = selectors.message_history(user=user, conversation=first.conversation)
    query = answering.standalone_question("How often does it run?", history)
    assert query and "\n" not in query and len(query) <= 400
    assert query != "How often does it run?"


def test_the_prompt_carries_a_bounded_history_of_earlier_turns(two_topics, settings):
    settings.KB_HISTORY_TURNS = 2
    settings.KB_HISTORY_ANSWER_CHARS = 20
    user, collection = two_topics
    conversation = None
    for i in range(4):
        message, _ = message_ask(
            user=user, question=f"Question {i} about backups?", collections=[collection], conversation=conversation
        )
        answered(message, answer=f"Answer {i} " + "x" * 50)
        conversation = message.conversation
    last, _ = message_ask(
        user=user, question="And the restore?", collections=[collection], conversation=conversation
    )
    history = selectors.message_history(user=user, conversation=conversation, before=last)
    prompt = answering.build_messages(last.question, last.sources, history)
    roles = [m["role"] for m in prompt]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [prompt[1]["content"], prompt[3]["content"]] == ["Question 2 about backups?", "Question 3 about backups?"]
    assert prompt[2]["content"] == "Answer 2 " + "x" * 11 + " …"
    assert "<sources>" in prompt[-1]["content"] and "Question: And the restore?" in prompt[-1]["content"]


def test_history_leaves_out_turns_that_drew_on_a_revoked_collection(two_topics):
    user, collection = two_topics
    secret = make_collection(viewer=[user])
    add_document(secret, "payroll.md", "# Payroll\n\nSalaries are paid on the 25th of each month.")
    first, _ = message_ask(user=user, question="When are salaries paid?", collections=[collection, secret])
    answered(first, answer="On the 25th [1].")
    assert any(s["collection_id"] == secret.pk for s in first.sources)
    collection_revoke(actor=system_user(), collection=secret, user=user)
    assert selectors.message_history(user=user, conversation=first.conversation) == []


def test_regenerate_retrieves_again_and_streams_a_new_answer(two_topics, client):
    user, collection = two_topics
    message, _ = message_ask(user=user, question="When does the backup run?", collections=[collection])
    answered(message, answer="Old answer [1].")
    client.force_login(user)
    response = client.post(reverse("message_regenerate", args=[message.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert f'id="message-{message.pk}"' in html
    assert reverse("message_stream", args=[message.pk]) in html
    message.refresh_from_db()
    assert message.status == Message.Status.PENDING
    assert message.answer == "" and message.sources


def test_regenerate_uses_current_access(two_topics):
    user, collection = two_topics
    message, _ = message_ask(user=user, question="When does the backup run?", collections=[collection])
    answered(message)
    collection_revoke(actor=system_user(), collection=collection, user=user)
    message = message_regenerate(user=user, message=message)
    assert message.sources == []
    assert message.status == Message.Status.NO_ANSWER


def test_an_answer_being_written_cannot_be_regenerated(client):
    user, message = ask()
    message_claim(message=message)
    client.force_login(user)
    response = client.post(reverse("message_regenerate", args=[message.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 422
    assert "still being written" in response.content.decode()


def test_feedback_is_stored_with_the_answer_it_judged(client):
    user, message = ask()
    answered(message)
    client.force_login(user)
    url = reverse("message_feedback", args=[message.pk])
    response = client.post(url, {"rating": "-1", "comment": "Wrong time."}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert f'id="feedback-{message.pk}"' in response.content.decode()
    assert "not helpful" in response.content.decode()
    # Changing one's mind updates the same judgement.
    client.post(url, {"rating": "1"}, headers={"HX-Request": "true"})
    feedback = Feedback.objects.get()
    assert (feedback.rating, feedback.comment, feedback.user) == (1, "", user)
    assert feedback.answer == "Backups run nightly at 02:00 [1]."
    # A regenerate keeps the judgement of the old answer, detached from the new one.
    message_regenerate(user=user, message=message)
    feedback.refresh_from_db()
    assert feedback.message is None and feedback.answer == "Backups run nightly at 02:00 [1]."


def test_feedback_on_someone_elses_answer_is_404(client):
    _, message = ask()
    answered(message)
    client.force_login(make_user())
    assert client.post(reverse("message_feedback", args=[message.pk]), {"rating": "1"}).status_code == 404
    assert not Feedback.objects.exists()


def test_an_unfinished_answer_cannot_be_rated(client):
    user, message = ask()
    client.force_login(user)
    response = client.post(
        reverse("message_feedback", args=[message.pk]), {"rating": "1"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 422
    assert not Feedback.objects.exists()


def test_admins_read_feedback_in_the_admin(client):
    user, message = ask()
    answered(message)
    feedback_give(user=user, message=message, rating=-1, comment="Too vague")
    client.force_login(make_user(is_staff=True, is_superuser=True))
    response = client.get(reverse("admin:kb_feedback_changelist"))
    assert response.status_code == 200
    assert "Too vague" in response.content.decode()


def test_a_follow_up_streams_an_answer_from_the_real_model(two_topics, model_server):
    user, collection = two_topics
    first, _ = message_ask(user=user, question="When does the backup run?", collections=[collection])
    read_stream(user, first)
    first.refresh_from_db()
    assert first.status == Message.Status.COMPLETE
    follow_up, _ = message_ask(
        user=user, question="How many copies does it keep?", collections=[collection], conversation=first.conversation
    )
    events = read_stream(user, follow_up)
    assert events[-1][0] == "done"
    follow_up.refresh_from_db()
    assert follow_up.status == Message.Status.COMPLETE and follow_up.answer.strip()


def test_asking_from_home_searches_only_the_picked_readable_collections(client):
    user = make_user()
    ops = make_collection(viewer=[user])
    add_document(ops, "backups.md", BACKUPS)
    releases = make_collection(viewer=[user])
    add_document(releases, "deploys.md", DEPLOYS)
    hidden = make_collection()
    add_document(hidden, "secret.md", "# Backups\n\nThe secret backup runs at 03:00.")
    client.force_login(user)
    client.post(reverse("ask"), {"question": "When do releases go out?", "collections": [releases.pk, hidden.pk]})
    picked = Message.objects.latest("created_at")
    assert picked.sources and {s["collection_id"] for s in picked.sources} == {releases.pk}
    assert set(picked.conversation.collections.all()) == {releases}
    client.post(reverse("ask"), {"question": "When does the backup run?"})
    everything = Message.objects.latest("created_at")
    assert set(everything.conversation.collections.all()) == {ops, releases}
    assert everything.sources[0]["source"] == "backups.md"
    assert hidden.pk not in {s["collection_id"] for s in everything.sources}


def test_each_citation_links_to_its_own_passage_and_unknown_numbers_stay_text(client):
    import re

    user, message = ask("How do I restore a backup, and when do backups run?")
    by_heading = {s["heading"].split(" > ")[-1]: s for s in message.sources}
    restore, schedule = by_heading["Restore"], by_heading["Schedule"]
    answered(
        message, answer=f"Stop the app, run the script [{restore['n']}]. Nightly at 02:00 [{schedule['n']}]. See [9]."
    )
    client.force_login(user)
    html = client.get(message.conversation.get_absolute_url()).content.decode()
    links = dict((int(n), href) for href, n in re.findall(r'<a class="cite" href="([^"]+)"[^>]*>\[(\d+)\]</a>', html))
    assert set(links) == {restore["n"], schedule["n"]}, "only numbers of real sources become links"
    assert "See [9]." in html
    for source in (restore, schedule):
        page = client.get(links[source["n"]].replace("&amp;", "&")).content.decode()
        hit = re.search(r'id="chunk-(\d+)" class="passage passage-hit"', page)
        assert hit and int(hit.group(1)) == source["chunk_id"]
