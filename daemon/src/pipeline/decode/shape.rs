//! The shape rule: does a decoded window fit the input of the model its route uses?
//!
//! Pure (no I/O, no clock): the decode stage asks the engine for the route's current
//! model shape ([`crate::pipeline::types::Admit::input_shape`]) and applies [`fit`] to
//! every decoded event; a window that does not fit is refused as bad input
//! (`shape_mismatch`) and never reaches the engine, so it is never answered, not even by
//! the fallback.
//!
//! The rule is exact: a model reads exactly `channels × samples` values, channel-major,
//! so a window with fewer or more channels, or a shorter or longer window, is not
//! padded, cut or re-sampled into it (that would feed the model something it was not
//! trained on and actuate on the answer). An empty window (no channel or no sample, which
//! the wire already refuses) fits no model.

use crate::pipeline::types::WindowShape;

/// Why a decoded window does not fit its route's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The window holds no value.
    #[error("window {window} (channels × samples) is empty; the route's model reads {model}")]
    Empty {
        /// The window's shape.
        window: WindowShape,
        /// The model's input shape.
        model: WindowShape,
    },
    /// The window has another shape than the model reads.
    #[error(
        "window {window} (channels × samples) does not fit the route's model, which reads {model}"
    )]
    Mismatch {
        /// The window's shape.
        window: WindowShape,
        /// The model's input shape.
        model: WindowShape,
    },
}

impl ShapeError {
    /// The `reason` label of `reflexd_bad_input_total` and `GET /bad-input`.
    pub fn reason(&self) -> &'static str {
        "shape_mismatch"
    }
}

/// Ok when a `window` of that shape is exactly what a model reading `model` takes.
pub fn fit(window: WindowShape, model: WindowShape) -> Result<(), ShapeError> {
    if window.is_empty() {
        Err(ShapeError::Empty { window, model })
    } else if window != model {
        Err(ShapeError::Mismatch { window, model })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{fit, ShapeError};
    use crate::pipeline::types::WindowShape;

    const EDGE: WindowShape = WindowShape::new(3, 64);

    fn mismatch(channels: usize, samples: usize) -> Result<(), ShapeError> {
        Err(ShapeError::Mismatch {
            window: WindowShape::new(channels, samples),
            model: EDGE,
        })
    }

    #[test]
    fn a_window_of_exactly_the_models_shape_fits() {
        assert_eq!(fit(EDGE, EDGE), Ok(()));
        assert_eq!(fit(WindowShape::new(1, 1), WindowShape::new(1, 1)), Ok(()));
    }

    #[test]
    fn a_window_with_fewer_channels_does_not_fit() {
        assert_eq!(fit(WindowShape::new(2, 64), EDGE), mismatch(2, 64));
        assert_eq!(fit(WindowShape::new(1, 64), EDGE), mismatch(1, 64));
    }

    #[test]
    fn a_window_with_more_channels_does_not_fit() {
        assert_eq!(fit(WindowShape::new(4, 64), EDGE), mismatch(4, 64));
    }

    #[test]
    fn a_shorter_or_longer_window_does_not_fit() {
        assert_eq!(fit(WindowShape::new(3, 32), EDGE), mismatch(3, 32));
        assert_eq!(fit(WindowShape::new(3, 63), EDGE), mismatch(3, 63));
        assert_eq!(fit(WindowShape::new(3, 65), EDGE), mismatch(3, 65));
        assert_eq!(fit(WindowShape::new(3, 128), EDGE), mismatch(3, 128));
    }

    #[test]
    fn a_window_with_as_many_values_in_another_shape_does_not_fit() {
        // 6 × 32 = 3 × 64 values: read channel-major, every row would be wrong.
        assert_eq!(fit(WindowShape::new(6, 32), EDGE), mismatch(6, 32));
        assert_eq!(fit(WindowShape::new(2, 96), EDGE), mismatch(2, 96));
    }

    #[test]
    fn a_window_with_zero_samples_or_channels_fits_no_model() {
        for window in [
            WindowShape::new(3, 0),
            WindowShape::new(0, 64),
            WindowShape::new(0, 0),
        ] {
            assert_eq!(
                fit(window, EDGE),
                Err(ShapeError::Empty {
                    window,
                    model: EDGE
                })
            );
        }
        // Not even a model that would read nothing.
        let none = WindowShape::new(3, 0);
        assert!(fit(none, none).is_err());
    }

    #[test]
    fn the_refusal_names_the_bad_and_the_expected_shape() {
        let e = fit(WindowShape::new(2, 32), EDGE).unwrap_err();
        assert_eq!(e.reason(), "shape_mismatch");
        assert_eq!(
            e.to_string(),
            "window 2 × 32 (channels × samples) does not fit the route's model, \
             which reads 3 × 64"
        );
        let e = fit(WindowShape::new(3, 0), EDGE).unwrap_err();
        assert_eq!(e.reason(), "shape_mismatch");
        assert_eq!(
            e.to_string(),
            "window 3 × 0 (channels × samples) is empty; the route's model reads 3 × 64"
        );
    }

    proptest! {
        #[test]
        fn a_window_fits_exactly_when_it_has_the_models_shape(
            wc in 0usize..=8, ws in 0usize..=130, mc in 1usize..=8, ms in 1usize..=130,
        ) {
            let (window, model) = (WindowShape::new(wc, ws), WindowShape::new(mc, ms));
            let verdict = fit(window, model);
            prop_assert_eq!(verdict.is_ok(), window == model);
            if let Err(e) = verdict {
                let text = e.to_string();
                let (w, m) = (format!("window {window} ("), format!("reads {model}"));
                prop_assert!(text.starts_with(&w), "{}", text);
                prop_assert!(text.ends_with(&m), "{}", text);
            }
        }

        #[test]
        fn a_shape_survives_the_atomic_word_it_is_swapped_in(
            c in 0usize..=u32::MAX as usize, s in 0usize..=u32::MAX as usize,
            c2 in 0usize..=1024, s2 in 0usize..=1024,
        ) {
            let cell = crate::pipeline::types::InputShape::new(WindowShape::new(c, s));
            prop_assert_eq!(cell.get(), WindowShape::new(c, s));
            cell.set(WindowShape::new(c2, s2));
            prop_assert_eq!(cell.get(), WindowShape::new(c2, s2));
        }
    }
}
