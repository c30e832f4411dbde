//! `chorus-delay`: a userspace link delayer for fault tests (kernel netem is not available on
//! these machines). It binds an NFQUEUE, holds every packet the firewall sends there for a
//! fixed time, then lets it through, in arrival order. Run it in the network namespace whose
//! rule feeds the queue, e.g. to give every packet 127.0.0.2 sends to 127.0.0.4 a 45 s delay:
//!
//! ```text
//! iptables -A OUTPUT -s 127.0.0.2 -d 127.0.0.4 -j NFQUEUE --queue-num 0
//! chorus-delay --queue 0 --delay-ms 45000
//! ```
//!
//! Without `--queue-bypass` on the rule, the matched traffic is dropped while no delayer runs.
//! Packets beyond `--max-held` are dropped (a full link), and counted.
//!
//! Linux only (NFQUEUE): elsewhere the binary says so and exits, so the rest of the CLI builds
//! on any platform.

#[cfg(target_os = "linux")]
fn main() {
    nfqueue::main()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("chorus-delay holds the packets of a Linux NFQUEUE: it runs on Linux only");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
mod nfqueue {
    use std::{
        collections::VecDeque,
        io::ErrorKind,
        time::{Duration, Instant},
    };

    use clap::Parser;

    /// Hold every packet of an NFQUEUE for a fixed time, then accept it.
    #[derive(Parser)]
    #[command(name = "chorus-delay", version)]
    struct Args {
        /// The NFQUEUE number the firewall rule sends packets to.
        #[arg(long, default_value_t = 0)]
        queue: u16,
        /// How long each packet is held.
        #[arg(long)]
        delay_ms: u64,
        /// Most packets held at once (the kernel queue is sized to match); more are dropped.
        #[arg(long, default_value_t = 100_000)]
        max_held: u32,
    }

    /// How long the loop sleeps when there is nothing to receive or release.
    const IDLE_SLEEP: Duration = Duration::from_micros(500);

    pub fn main() {
        let a = Args::parse();
        if let Err(e) = run(&a) {
            eprintln!("chorus-delay: {e}");
            std::process::exit(1);
        }
    }

    fn run(a: &Args) -> std::io::Result<()> {
        let mut q = nfq::Queue::open()?;
        q.bind(a.queue)?;
        // Only the verdict matters: copy no payload, keep a 45 s backlog in the kernel queue.
        q.set_copy_range(a.queue, 0)?;
        q.set_queue_max_len(a.queue, a.max_held)?;
        q.set_nonblocking(true);
        let delay = Duration::from_millis(a.delay_ms);
        let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
        let (mut passed, mut dropped) = (0u64, 0u64);
        let mut report = Instant::now();
        println!(
            "chorus-delay: queue {} holds packets {} ms",
            a.queue, a.delay_ms
        );
        loop {
            let mut busy = false;
            match q.recv() {
                Ok(mut msg) => {
                    busy = true;
                    if held.len() >= a.max_held as usize {
                        msg.set_verdict(nfq::Verdict::Drop);
                        q.verdict(msg)?;
                        dropped += 1;
                    } else {
                        held.push_back((Instant::now() + delay, msg));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            while held.front().is_some_and(|(due, _)| *due <= now) {
                let (_, mut msg) = held.pop_front().expect("checked");
                msg.set_verdict(nfq::Verdict::Accept);
                q.verdict(msg)?;
                passed += 1;
                busy = true;
            }
            if report.elapsed() >= Duration::from_secs(10) {
                println!(
                    "chorus-delay: {passed} passed, {} held, {dropped} dropped",
                    held.len()
                );
                report = Instant::now();
            }
            if !busy {
                std::thread::sleep(IDLE_SLEEP);
            }
        }
    }
}
