pub mod datapath { pub mod object; }
