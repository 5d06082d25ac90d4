//! The consistent hash ring: model, codec, token generation and lookup.
