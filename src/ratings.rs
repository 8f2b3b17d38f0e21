//! Elo ratings: pure arithmetic shared by the store (which applies updates atomically) and
//! the leaderboard. Every agent starts at 1500; K = 32.

pub const INITIAL_RATING: f64 = 1500.0;
pub const K_FACTOR: f64 = 32.0;

/// Expected score of a player rated `a` against one rated `b`.
pub fn expected(a: f64, b: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf((b - a) / 400.0))
}

/// New ratings after one game; `score_a` is 1 (a won), 0.5 (draw) or 0 (b won).
pub fn update(a: f64, b: f64, score_a: f64, k: f64) -> (f64, f64) {
    let ea = expected(a, b);
    let delta = k * (score_a - ea);
    (a + delta, b - delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_players_split_k() {
        let (a, b) = update(1500.0, 1500.0, 1.0, K_FACTOR);
        assert_eq!((a, b), (1516.0, 1484.0));
        let (a, b) = update(1500.0, 1500.0, 0.5, K_FACTOR);
        assert_eq!((a, b), (1500.0, 1500.0));
    }

    #[test]
    fn upsets_move_ratings_more() {
        let (fav, _) = update(1700.0, 1500.0, 1.0, K_FACTOR);
        let (under, _) = update(1500.0, 1700.0, 1.0, K_FACTOR);
        assert!(under - 1500.0 > fav - 1700.0);
        // Points are conserved.
        let (a, b) = update(1612.0, 1433.0, 0.0, K_FACTOR);
        assert!((a + b - 3045.0).abs() < 1e-9);
    }
}
