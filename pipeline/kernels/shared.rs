//! [`Shared`]: an output buffer that the threads of `ComputeContext::par_for` write in disjoint
//! parts.

/// A pointer to an output that the threads of `ComputeContext::par_for` write in disjoint parts.
#[derive(Clone, Copy)]
pub struct Shared<T>(pub *mut T);
// SAFETY: every user writes only its own range of the buffer (one plane per iteration).
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The `len` elements from `start`.
    ///
    /// # Safety
    /// The range lies in the buffer and no other live slice overlaps it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}
