fn main() {
    eprintln!("switch: the QUIC server is not part of this build yet; see README.md");
    std::process::exit(2);
}
