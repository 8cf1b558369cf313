//! The status buffer of the kernels that read device-side indices (`reshape_and_cache`,
//! `paged_attention`, `rotary_embedding`): each core writes how many entries it refused into its
//! own 32-byte slot (`StatusWord` in `kernels/common.h`), and the host turns a non-zero total
//! into an error once the kernel is done: at once for the host runners, at the stream's next
//! synchronisation on the NPU.

use ascend_hal::{Error, Result};

/// `int32` words per core (one 32-byte block, so cores never share one).
pub(crate) const WORDS_PER_CORE: usize = 8;

/// The status buffer's length in `int32` words for a launch on `block_dim` cores.
pub(crate) fn words(block_dim: u32) -> usize {
    block_dim as usize * WORDS_PER_CORE
}

/// The refused entries the cores counted.
pub(crate) fn refused(words: &[i32]) -> u64 {
    words
        .chunks(WORDS_PER_CORE)
        .map(|core| core[0].max(0) as u64)
        .sum()
}

/// `Ok` if nothing was refused, else an error saying what the kernel did instead.
pub(crate) fn check(op: &'static str, refused: u64) -> Result<()> {
    if refused == 0 {
        return Ok(());
    }
    let message = match op {
        "reshape_and_cache" => format!(
            "{refused} slot_mapping entr{} past the end of the cache were skipped on the device \
             (those tokens are not cached); slots must index the cache, or be negative to skip",
            if refused == 1 { "y" } else { "ies" }
        ),
        "paged_attention" => format!(
            "{refused} sequence{} had a length or an attended block-table entry out of range on \
             the device; their outputs are zeros",
            if refused == 1 { "" } else { "s" }
        ),
        _ => format!(
            "{refused} position{} outside the cos/sin table on the device; those tokens' query \
             and key rows are zeros",
            if refused == 1 { "" } else { "s" }
        ),
    };
    Err(Error::InvalidArgument { op, message })
}
