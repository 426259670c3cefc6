"""Tokens on plain files: made, kept hashed and private, verified, revoked."""

from __future__ import annotations

import json
import os

import pytest

from scheduler.errors import UserError
from scheduler.server.tokens import TokenBook, tokens_path


def test_a_token_is_kept_only_as_its_hash_in_a_private_file(tmp_path):
    book = TokenBook(tmp_path)
    token = book.create("alice")
    assert token.startswith("labq_") and len(token) > 40
    text = tokens_path(tmp_path).read_text()
    assert token not in text and token[5:] not in text
    assert json.loads(text)["tokens"][0]["user"] == "alice"
    assert oct(tokens_path(tmp_path).stat().st_mode & 0o777) == "0o600"
    assert oct(tokens_path(tmp_path).parent.stat().st_mode & 0o777) == "0o700"
    assert book.verify(token) == "alice"


@pytest.mark.parametrize("presented", [None, "", "labq_", "labq_wrong", "x" * 500, "Bearer labq_x"])
def test_anything_else_is_nobody(tmp_path, presented):
    book = TokenBook(tmp_path)
    book.create("alice")
    assert book.verify(presented) is None


def test_another_process_creating_or_revoking_takes_effect_at_once(tmp_path):
    server_view = TokenBook(tmp_path)  # what a running server holds
    assert server_view.verify("labq_" + "a" * 43) is None
    bob = TokenBook(tmp_path).create("bob")
    assert server_view.verify(bob) == "bob"
    second = TokenBook(tmp_path).create("bob")
    assert TokenBook(tmp_path).revoke("bob", TokenBook(tmp_path).entries()[0].token_id) == 1
    assert server_view.verify(bob) is None and server_view.verify(second) == "bob"
    assert TokenBook(tmp_path).revoke("bob") == 1
    assert server_view.verify(second) is None


@pytest.mark.parametrize("name", ["", "Alice", "a b", "../x", "x" * 65, "-x", "al\nice"])
def test_a_user_name_must_look_like_an_account_name(tmp_path, name):
    with pytest.raises(UserError, match="expected a user name"):
        TokenBook(tmp_path).create(name)
    assert not tokens_path(tmp_path).exists()


def test_a_damaged_token_file_is_one_line_not_a_traceback(tmp_path):
    path = tokens_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(UserError, match="cannot read the token file"):
        TokenBook(tmp_path).entries()
