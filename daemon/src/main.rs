//! `reflexd`: the reflex edge inference daemon (being built: see issue 4).

fn main() {
    eprintln!("reflexd: not built yet; see `reflex-sim demo`");
    std::process::exit(64);
}
