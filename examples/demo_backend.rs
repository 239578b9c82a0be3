//! A tiny HTTP backend for trying baton out: answers every request with its
//! own name, so `curl 127.0.0.1:8080` shows which backend served it.
//!
//! Usage: `demo_backend ADDR NAME`

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let name = args.next().unwrap_or_else(|| "app".into());
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo_backend: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("demo_backend {name} listening on {addr}");
    for stream in listener.incoming().flatten() {
        let body = format!("hello from {name} ({addr})\n");
        thread::spawn(move || serve(stream, &body));
    }
}

/// HTTP/1.1 with keep-alive: one answer per request head until the client
/// closes or asks to close.
fn serve(stream: TcpStream, body: &str) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = writer;
    let mut reader = BufReader::new(stream);
    loop {
        let mut close = false;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if header.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}
