//! `byok.mask` and `byok.redact`: the masking rules of byok-core, in SQL;
//! and [`TextArg`], how every Rust function of pg_byok takes `text`.
//!
//! pg_byok works in UTF8 databases only (sql/encoding.sql refuses any other
//! at CREATE EXTENSION). The library can still be called elsewhere (a 0.1.0
//! install in a SQL_ASCII database, a function declared by hand), where pgrx's
//! own `&str` conversion panics on the first non-UTF-8 byte and the client
//! gets a Rust panic message, with a backtrace in its DETAIL when the server
//! runs with RUST_BACKTRACE. A [`TextArg`] is checked by us instead: 22021
//! with a hint, and nothing of the value in the error.

use crate::error::ExtError;
use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::prelude::*;

/// A `text` argument as the bytes Postgres holds; see the module docs.
pub(crate) struct TextArg<'a>(&'a [u8]);

impl<'a> TextArg<'a> {
    /// The text, or 22021 naming `what` when it is not UTF-8.
    pub(crate) fn utf8(&self, what: &'static str) -> &'a str {
        std::str::from_utf8(self.0).unwrap_or_else(|_| ExtError::NotUtf8 { what }.raise())
    }
}

impl_sql_translatable!(TextArg<'_>, arg_only = "text");

impl<'a> FromDatum for TextArg<'a> {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<TextArg<'a>> {
        if is_null || datum.is_null() {
            return None;
        }
        // SAFETY: a non-NULL text datum (the function is declared with a text
        // argument); detoasting copies it into the current memory context,
        // which outlives the call, as pgrx's own &str conversion relies on.
        unsafe {
            let varlena = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            Some(TextArg(pgrx::varlena::varlena_to_byte_slice(varlena)))
        }
    }
}

// SAFETY: the same unboxing pgrx does for its own varlena types (`&str`,
// `&[u8]`): through FromDatum, NULL checked.
unsafe impl<'fcx> ArgAbi<'fcx> for TextArg<'fcx> {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: the caller's contract (a text argument).
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: the caller's contract (a text argument).
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

/// '…' followed by the last 4 characters of the (trimmed) key.
#[pg_extern(immutable, parallel_safe, strict, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn mask(api_key: TextArg<'_>) -> String {
    byok_core::mask::mask(api_key.utf8("api_key"))
}

/// The input with every key-shaped substring masked.
#[pg_extern(immutable, parallel_safe, strict, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn redact(input: TextArg<'_>) -> String {
    byok_core::redact::redact(input.utf8("input")).into_owned()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    // The masking rules themselves are byok-core's, tested there
    // (core/src/mask.rs, core/src/redact/tests.rs); here only what SQL adds.
    #[pg_test]
    fn mask_of_null_is_null() {
        assert_eq!(
            Spi::get_one::<String>("SELECT byok.mask(NULL)").unwrap(),
            None
        );
    }
}
