//! Writes the fuzzers' seed inputs (real event blocks and sync messages) into DIR/TARGET/.
//! `cargo run -p chorus-core --features fuzzing --example fuzz_seeds -- fuzz/corpus`

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".to_string());
    let seeds = chorus_core::fuzz::seeds();
    for (i, (target, data)) in seeds.iter().enumerate() {
        let d = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{i}")), data)?;
    }
    println!("{} seeds in {dir}", seeds.len());
    Ok(())
}
