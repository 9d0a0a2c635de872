//! Encode + decode throughput of `core.exec.stdout` frames.
//!
//! One iteration is the whole stdout path through the codec: build the message from the bytes,
//! write the frame into a buffer, decode the frame, check the envelope and decode the payload.
//! Throughput counts payload bytes, single thread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bytes::BytesMut;
use msb_protocol::frame::decode_frame;
use msb_protocol::types::ExecStdout;
use msb_protocol::Message;
use serde::Serialize;

/// Figures for one payload size.
#[derive(Debug, Serialize)]
pub struct SizeResult {
    payload_bytes: usize,
    iterations: u64,
    seconds: f64,
    mb_per_s: f64,
    frames_per_s: f64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    benchmark: &'static str,
    unit_note: &'static str,
    results: Vec<SizeResult>,
}

fn one_round(data: &[u8], buf: &mut BytesMut) -> Result<usize> {
    let msg = Message::new(
        7,
        &ExecStdout {
            data: data.to_vec(),
        },
    )?;
    msg.encode_into(buf)?;
    let frame = decode_frame(buf)?.expect("a whole frame was written");
    let back = Message::from_frame(&frame)?.decode::<ExecStdout>()?;
    Ok(back.data.len())
}

/// Runs each size for about `per_size`.
pub fn run(per_size: Duration) -> Result<Report> {
    let mut results = Vec::new();
    for size in [4 * 1024, 64 * 1024, 1024 * 1024] {
        let data: Vec<u8> = (0..size)
            .map(|i| u8::try_from(i * 31 % 251).expect("below 251"))
            .collect();
        let mut buf = BytesMut::with_capacity(size + 64);
        ensure!(one_round(&data, &mut buf)? == size, "round trip lost bytes");
        let start = Instant::now();
        let mut iterations = 0u64;
        while start.elapsed() < per_size {
            for _ in 0..16 {
                black_box(one_round(black_box(&data), &mut buf)?);
            }
            iterations += 16;
        }
        let seconds = start.elapsed().as_secs_f64();
        let bytes = iterations as f64 * size as f64;
        results.push(SizeResult {
            payload_bytes: size,
            iterations,
            seconds,
            mb_per_s: bytes / seconds / 1e6,
            frames_per_s: iterations as f64 / seconds,
        });
    }
    Ok(Report {
        benchmark: "protocol_codec_exec_stdout_encode_decode",
        unit_note: "MB/s = 10^6 payload bytes per second, one core, encode+decode",
        results,
    })
}
