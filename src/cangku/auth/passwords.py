"""Password hashing (bcrypt) and generated secrets."""

from __future__ import annotations

import functools
import secrets

import bcrypt

# bcrypt only looks at the first 72 bytes; longer passwords are refused rather than cut.
MAX_PASSWORD_BYTES = 72
MIN_PASSWORD_LENGTH = 8
# bcrypt's cost: 2^12 rounds, about 0.3 s per check on a server core.
BCRYPT_ROUNDS = 12


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()


def verify_password(password: str, password_hash: str) -> bool:
    """Constant-time check (bcrypt compares its own output in constant time)."""
    encoded = password.encode()
    if len(encoded) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(encoded, password_hash.encode())
    except ValueError:
        return False


def bcrypt_cost(password_hash: str) -> int:
    """The cost factor of a `$2b$12$...` hash (0 when it is not one)."""
    parts = password_hash.split("$")
    return int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 0


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"a password may have at most {MAX_PASSWORD_BYTES} bytes")
    if any(ord(character) < 32 for character in password):
        raise ValueError("a password may not contain control characters")


def generate_password() -> str:
    return secrets.token_urlsafe(18)


@functools.cache
def dummy_hash(rounds: int) -> str:
    """A hash to verify against when the account does not exist, so that a wrong user name
    takes as long as a wrong password. Made on first use (0.3 s), not at every start."""
    return bcrypt.hashpw(b"not a real password", bcrypt.gensalt(rounds=rounds)).decode()
