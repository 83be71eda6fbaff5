use super::*;

#[test]
fn node_numbers_come_from_their_names() {
    assert_eq!(index_of("gpu", "gpu-12"), Some(12));
    assert_eq!(index_of("gpu", "gpu-a-1"), None);
    assert_eq!(index_of("gpu", "cpu-1"), None);
}

#[test]
fn an_idle_node_goes_only_in_the_last_minutes_of_a_billed_hour() {
    let h = 3_600_000;
    let m = Duration::from_secs(120);
    assert!(!before_next_hour(0, h / 2, m));
    assert!(before_next_hour(0, h - 60_000, m));
    assert!(!before_next_hour(0, h + 60_000, m));
    assert!(before_next_hour(0, 2 * h - 30_000, m));
    // A drain of up to 10 minutes starts the decision that much earlier.
    assert!(before_next_hour(0, h - 600_000, Duration::from_secs(720)));
    assert!(!before_next_hour(0, h - 600_000, m));
}
